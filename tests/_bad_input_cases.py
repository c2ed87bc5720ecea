"""The bad inputs of every entry point, as data: walked by tests/test_bad_input.py and benchmarks/bench_bad_input.py.

Each :class:`Case` is one command line (after ``clinisynth``) that must end in exactly one ``error:`` line, exit code
2, nothing on stdout and nothing written. ``readme`` is the phrase of the README's "Bad input" list the case checks.
Placeholders: ``{tmp}`` is the case's own folder (created empty, then ``setup`` fills it; it is also the working
directory). ``GENERATE_CASES`` / ``CAMPAIGN_CASES`` are the older, generate- and curate-specific tables.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REQUEST = "moderate right pleural effusion with basal atelectasis, PA chest radiograph"
RUN_ID = "20261121T000000.000000Z-00000000"


@dataclass(frozen=True)
class Case:
    """One bad command line.

    Args:
        readme: phrase of the README's "Bad input" clause this case checks.
        argv: the arguments after ``clinisynth``.
        message: text the error line must hold.
        env: environment variables to set (``None``: unset).
        setup: names of :data:`SETUPS` run on the case's folder first.
        subprocess: run as a real process (argv bytes that are not UTF-8 reach Python only that way); the others
            run in-process with typer's runner.
        needs_no_gpu: the case is bad only on a machine without a CUDA GPU.
    """

    readme: str
    argv: tuple[str, ...]
    message: str
    env: dict = field(default_factory=dict)
    setup: tuple[str, ...] = ()
    subprocess: bool = False
    needs_no_gpu: bool = False

    @property
    def name(self) -> str:
        shown = " ".join(self.argv).replace("{tmp}/", "")
        envs = " ".join(f"{key}={value}" for key, value in self.env.items())
        text = " ".join(part for part in (envs, shown) if part)[:110]
        return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _generate(*args: str, text: str = REQUEST) -> tuple[str, ...]:
    return ("generate", text, "--out", "{tmp}/out", "-n", "1", *args)


def _numeric_settings() -> list[Case]:
    """Every numeric and JSON ``CLINISYNTH_*`` setting with a value of the wrong type and one out of range."""
    bad = {
        "RETRIEVAL_THRESHOLD": ("high", "1.5"),
        "MAX_REQUEST_CHARS": ("many", "0"),
        "MAX_ROUNDS": ("three", "21"),
        "MAX_IMAGES": ("1e3x", "0"),
        "BEST_OF": ("best", "17"),
        "MEMORISATION_DATA": ("{not json", "[1, 2]"),
        "VERIFIER_THRESHOLDS": ("{not json", '{"chest_xray": {"min_label_probability": "high"}}'),
        "CACHE_DIR": ("",),
    }
    return [Case("setting value of the wrong type or out of range", _generate(), f"CLINISYNTH_{name}",
                 env={f"CLINISYNTH_{name}": value}) for name, values in bad.items() for value in values]


#: Every entry point's bad inputs beyond generate's own list (issue 15).
ENTRY_CASES: list[Case] = [
    # Text that is not text: bytes that are not UTF-8 (a real process: the shell's bytes), escapes, controls.
    Case("text that is not UTF-8", _generate(text="pleural effusion \udce9 PA chest radiograph"), "not valid UTF-8",
         subprocess=True),
    Case("text that is not UTF-8", ("plan", "pleural effusion \udce9 PA chest radiograph"), "not valid UTF-8",
         subprocess=True),
    Case("text that is not UTF-8", ("knowledge", "search", "pleural \udce9ffusion"), "not valid UTF-8"),
    Case("holds control characters", _generate(text="\x1b[31mpleural effusion\x1b[0m, PA chest radiograph"),
         "control character U+001B"),
    Case("holds control characters", _generate(text="pleural effusion\x00, PA chest radiograph"),
         "control character U+0000"),
    Case("holds control characters", _generate(text="pleural effusion \u202eyar hpargoidar tsehc AP"),
         "control character U+202E"),
    Case("holds control characters", ("plan", "\x1b]0;owned\x07pleural effusion, PA chest radiograph"),
         "control character U+001B"),
    Case("holds control characters", ("knowledge", "search", "effusion\x1b[2J"), "control character"),
    Case("an empty query", ("knowledge", "search", ""), "the query is empty"),
    Case("an empty query", ("knowledge", "search", "  \t "), "the query is empty"),
    Case("empty or whitespace description", ("plan", ""), "the description is empty"),
    # Settings: the TOML file, CLINISYNTH_CONFIG, every numeric / JSON variable; on several commands.
    Case("settings file that is not TOML", _generate(), "not valid TOML", setup=("toml-corrupt",)),
    Case("names an unknown setting", _generate(), "unknown setting 'colour'", setup=("toml-unknown",)),
    Case("setting value of the wrong type or out of range", _generate(), "setting max_rounds (",
         setup=("toml-wrong-type",)),
    Case("a `CLINISYNTH_CONFIG` that is not a file", _generate(), "CLINISYNTH_CONFIG",
         env={"CLINISYNTH_CONFIG": "{tmp}/nowhere.toml"}),
    Case("a `CLINISYNTH_CONFIG` that is not a file", _generate(), "CLINISYNTH_CONFIG", env={"CLINISYNTH_CONFIG": ""}),
    *_numeric_settings(),
    Case("setting value of the wrong type or out of range", ("plan", REQUEST), "CLINISYNTH_MAX_ROUNDS",
         env={"CLINISYNTH_MAX_ROUNDS": "x"}),
    Case("setting value of the wrong type or out of range", ("plan", "--jsonl", "{tmp}/a-file"),
         "CLINISYNTH_RETRIEVAL_THRESHOLD", env={"CLINISYNTH_RETRIEVAL_THRESHOLD": "x"}),
    Case("setting value of the wrong type or out of range", ("knowledge", "search", "effusion"),
         "CLINISYNTH_RETRIEVAL_THRESHOLD", env={"CLINISYNTH_RETRIEVAL_THRESHOLD": "x"}),
    Case("settings file that is not TOML", ("knowledge", "validate"), "not valid TOML", setup=("toml-corrupt",)),
    Case("setting value of the wrong type or out of range", ("curate", "{tmp}/campaign.yaml", "--out", "{tmp}/out"),
         "CLINISYNTH_MAX_IMAGES", env={"CLINISYNTH_MAX_IMAGES": "0"}, setup=("campaign",)),
    Case("a `CLINISYNTH_CONFIG` that is not a file",
         ("train", "lora", "--data", "{tmp}/ds", "--output", "{tmp}/run", "--profile", "tiny", "--steps", "1"),
         "CLINISYNTH_CONFIG", env={"CLINISYNTH_CONFIG": "{tmp}/nowhere.toml"}, setup=("dataset",)),
    Case("setting value of the wrong type or out of range", ("evaluate", "{tmp}/ds", "--real", "{tmp}/ds"),
         "CLINISYNTH_CACHE_DIR", env={"CLINISYNTH_CACHE_DIR": ""}, setup=("dataset",)),
    # Seeds.
    Case("a `--seed` outside", _generate("--seed", "-1"), "--seed must be"),
    Case("a `--seed` outside", _generate("--seed", str(2**64)), "--seed must be"),
    Case("a `--seed` outside", _generate("--seed", str(2**63 - 1)), "--seed must be"),
    Case("a `--seed` outside", ("train", "vae", "--data", "{tmp}/ds", "--output", "{tmp}/run", "--seed", "-1"),
         "--seed must be", setup=("dataset",)),
    Case("a `--seed` outside", ("train", "classifier", "{tmp}/ds", "--out", "{tmp}/run", "--seed", str(2**64)),
         "--seed must be", setup=("dataset",)),
    Case("a `--seed` outside", ("evaluate", "{tmp}/ds", "--real", "{tmp}/ds", "--seed", "-5"), "--seed must be",
         setup=("dataset",)),
    # Paths: empty, symlink loops, read-only.
    Case("an empty path", ("generate", REQUEST, "--out", ""), "--out is empty"),
    Case("an empty path", ("curate", "{tmp}/campaign.yaml", "--out", ""), "--out is empty", setup=("campaign",)),
    Case("an empty path", ("prepare", "{tmp}/src", ""), "OUT is empty", setup=("source",)),
    Case("an empty path", ("train", "vae", "--data", "{tmp}/ds", "--output", ""), "--output is empty",
         setup=("dataset",)),
    Case("an empty path", ("train", "classifier", "{tmp}/ds", "--out", ""), "--out is empty", setup=("dataset",)),
    Case("an empty path", ("evaluate", "{tmp}/ds", "--real", "{tmp}/ds", "--out", ""), "--out is empty",
         setup=("dataset",)),
    Case("an empty path", ("trace", "list", ""), "DIR is empty"),
    Case("symbolic-link loop", ("generate", REQUEST, "--out", "{tmp}/loop"), "cannot be followed", setup=("loop",)),
    Case("symbolic-link loop", ("generate", REQUEST, "--out", "{tmp}/loop/inner"), "cannot be followed",
         setup=("loop",)),
    Case("symbolic-link loop", ("prepare", "{tmp}/src", "{tmp}/loop"), "cannot be followed", setup=("source", "loop")),
    Case("symbolic-link loop", ("train", "vae", "--data", "{tmp}/ds", "--output", "{tmp}/loop"), "cannot be followed",
         setup=("dataset", "loop")),
    Case("symbolic-link loop", ("train", "classifier", "{tmp}/ds", "--out", "{tmp}/loop"), "cannot be followed",
         setup=("dataset", "loop")),
    Case("symbolic-link loop", ("evaluate", "{tmp}/ds", "--real", "{tmp}/ds", "--out", "{tmp}/loop"),
         "cannot be followed", setup=("dataset", "loop")),
    Case("symbolic-link loop", ("curate", "{tmp}/campaign.yaml", "--out", "{tmp}/loop"), "cannot be followed",
         setup=("campaign", "loop")),
    Case("or read-only, for every command", ("prepare", "{tmp}/src", "{tmp}/locked/out"), "is not writable",
         setup=("source", "locked")),
    Case("or read-only, for every command", ("train", "vae", "--data", "{tmp}/ds", "--output", "{tmp}/locked/run"),
         "is not writable", setup=("dataset", "locked")),
    Case("or read-only, for every command",
         ("train", "lora", "--data", "{tmp}/ds", "--output", "{tmp}/locked/run", "--profile", "tiny"),
         "is not writable", setup=("dataset", "locked")),
    Case("or read-only, for every command", ("train", "classifier", "{tmp}/ds", "--out", "{tmp}/locked/run"),
         "is not writable", setup=("dataset", "locked")),
    Case("or read-only, for every command", ("evaluate", "{tmp}/ds", "--real", "{tmp}/ds", "--out", "{tmp}/locked/r"),
         "is not writable", setup=("dataset", "locked")),
    # Files that are not text.
    Case("binary or non-UTF-8 file for `plan --jsonl`", ("plan", "--jsonl", "{tmp}/binary.dat"), "is binary",
         setup=("binary",)),
    Case("binary or non-UTF-8 file for `plan --jsonl`", ("plan", "--jsonl", "{tmp}/latin1.txt"), "not UTF-8 text",
         setup=("latin1",)),
    Case("binary or non-UTF-8 file for `plan --jsonl`", ("plan", "--jsonl", "{tmp}/nowhere.jsonl"), "does not exist"),
    Case("binary or non-UTF-8 file for `plan --jsonl`",
         ("prepare", "{tmp}/src", "{tmp}/out", "--labels-from", "csv", "--csv", "{tmp}/binary.dat", "--modality",
          "chest_xray"), "is binary", setup=("source", "binary")),
    Case("binary or non-UTF-8 file for `plan --jsonl`",
         ("prepare", "{tmp}/src", "{tmp}/out", "--labels-from", "csv", "--csv", "{tmp}/latin1.txt", "--modality",
          "chest_xray"), "not UTF-8 text", setup=("source", "latin1")),
    # Devices and threads.
    Case("an unknown `--device`", ("train", "classifier", "{tmp}/ds", "--out", "{tmp}/run", "--device", "banana"),
         "not a torch device", setup=("dataset",)),
    Case("an unknown `--device`", ("evaluate", "{tmp}/ds", "--real", "{tmp}/ds", "--device", "gpu0"),
         "not a torch device", setup=("dataset",)),
    Case("`--threads` below 1", ("train", "classifier", "{tmp}/ds", "--out", "{tmp}/run", "--threads", "0"),
         "--threads must be at least 1", setup=("dataset",)),
    # Traces.
    Case("a trace that is not valid JSON", ("trace", "show", RUN_ID, "--dir", "{tmp}/out"), "not valid JSON",
         setup=("corrupt-trace",)),
    Case("a file that is not a trace for `trace show`", ("trace", "show", "{tmp}/a-file"), "not valid JSON"),
    Case("a file that is not a trace for `trace show`", ("trace", "show", "{tmp}/list.json"), "not a run trace",
         setup=("json-list",)),
    Case("a file that is not a trace for `trace show`", ("trace", "show", "{tmp}/binary.dat"), "not text",
         setup=("binary",)),
    Case("a folder that does not exist for `trace list`", ("trace", "list", "{tmp}/nowhere"), "does not exist"),
    Case("a folder that does not exist for `trace list`", ("trace", "list", "{tmp}/a-file"), "is not a directory"),
    # Numbers that would train nothing or count wrongly.
    Case("`--steps` below 1 for `train`", ("train", "vae", "--data", "{tmp}/ds", "--output", "{tmp}/run", "--steps",
                                           "0"), "--steps must be at least 1", setup=("dataset",)),
    Case("`--steps` below 1 for `train`",
         ("train", "lora", "--data", "{tmp}/ds", "--output", "{tmp}/run", "--profile", "tiny", "--steps", "0"),
         "--steps must be at least 1", setup=("dataset",)),
    Case("`--steps` below 1 for `train`",
         ("train", "scratch", "--data", "{tmp}/ds", "--output", "{tmp}/run", "--vae", "{tmp}/ds", "--steps", "-2"),
         "--steps must be at least 1", setup=("dataset",)),
    Case("`--mixed-precision fp16` without a GPU",
         ("train", "lora", "--data", "{tmp}/ds", "--output", "{tmp}/run", "--profile", "tiny", "--mixed-precision",
          "fp16"), "fp16 needs a CUDA GPU", setup=("dataset",), needs_no_gpu=True),
    Case("`--mixed-precision fp16` without a GPU",
         ("train", "scratch", "--data", "{tmp}/ds", "--output", "{tmp}/run", "--vae", "{tmp}/ds", "--mixed-precision",
          "fp8"), "mixed_precision must be one of", setup=("dataset",)),
    Case("an unknown `--kind` or `--modality`", ("knowledge", "search", "effusion", "--kind", "bogus"),
         "--kind 'bogus' is not a record kind"),
    Case("an unknown `--kind` or `--modality`", ("knowledge", "search", "effusion", "--modality", "xray_of_the_soul"),
         "--modality 'xray_of_the_soul' is not a modality"),
    Case("a `--memorisation-threshold` outside 0..1",
         ("evaluate", "{tmp}/ds", "--real", "{tmp}/ds", "--memorisation-threshold", "5"),
         "--memorisation-threshold must be between 0 and 1", setup=("dataset",)),
    Case("a `--memorisation-threshold` outside 0..1",
         ("evaluate", "{tmp}/ds", "--real", "{tmp}/ds", "--memorisation-threshold", "-0.1"),
         "--memorisation-threshold must be between 0 and 1", setup=("dataset",)),
]


# ---- setups: what a case's folder holds before the command runs -------------------------------------------------

def _png(path: Path, value: int = 128) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("L", (32, 32), value)
    image.putpixel((3, 5), 255 - value)
    image.save(path)


def _dataset(root: Path) -> None:
    """A prepared-looking dataset: two classes of two images and their manifest."""
    rows = ["path,text,modality,label,source_sha256,width,height"]
    for label, value in (("normal", 60), ("pneumonia", 180)):
        for number in range(2):
            _png(root / "ds" / label / f"{label}{number}.png", value + number)
            rows.append(f"{label}/{label}{number}.png,chest radiograph,modality.chest_xray,{label},{number},32,32")
    (root / "ds" / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")


SETUPS = {
    "toml-corrupt": lambda root: (root / "clinisynth.toml").write_text("profile = [\n", encoding="utf-8"),
    "toml-unknown": lambda root: (root / "clinisynth.toml").write_text('colour = "red"\n', encoding="utf-8"),
    "toml-wrong-type": lambda root: (root / "clinisynth.toml").write_text('max_rounds = "many"\n', encoding="utf-8"),
    "loop": lambda root: (root / "loop").symlink_to(root / "loop"),
    "binary": lambda root: (root / "binary.dat").write_bytes(bytes(range(256)) * 4),
    "latin1": lambda root: (root / "latin1.txt").write_bytes("path,label\nr\xe9sum\xe9.png,normal\n".encode("latin-1")),
    "json-list": lambda root: (root / "list.json").write_text("[1, 2, 3]\n", encoding="utf-8"),
    "corrupt-trace": lambda root: ((root / "out" / "runs" / RUN_ID).mkdir(parents=True),
                                   (root / "out" / "runs" / RUN_ID / "trace.json").write_text('{"run_id": "x", ',
                                                                                              encoding="utf-8")),
    "campaign": lambda root: (root / "campaign.yaml").write_text(
        'profile: tiny\nsteps: 2\nitems:\n  - description: "normal chest radiograph"\n    count: 1\n', encoding="utf-8"),
    "source": lambda root: _png(root / "src" / "normal" / "a.png"),
    "dataset": _dataset,
    "locked": lambda root: (root / "locked").mkdir(),  # made read-only by lock() once the snapshot is taken
}


def prepare_folder(root: Path, case: Case) -> None:
    """The case's folder as the command will find it: ``a-file`` and the case's setups."""
    (root / "a-file").write_text("keep me", encoding="utf-8")
    for name in case.setup:
        SETUPS[name](root)


def placed(value: str | None, root: Path) -> str | None:
    return None if value is None else value.replace("{tmp}", str(root))


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (links not followed) with its bytes (``None`` for folders and links)."""
    found = {}
    for folder, folders, files in os.walk(root):
        for name in folders + files:
            path = Path(folder) / name
            found[str(path.relative_to(root))] = (path.read_bytes() if path.is_file() and not path.is_symlink()
                                                  else None)
    return found


def lock(root: Path) -> bool:
    """Make ``root/locked`` unwritable; ``False`` when that cannot be done by permissions (root writes anywhere)."""
    if os.geteuid() == 0:
        return False
    (root / "locked").chmod(0o500)
    return True


def unlock(root: Path) -> None:
    if (root / "locked").exists():
        (root / "locked").chmod(0o700)


def refuse_write_checks(monkeypatch) -> None:
    """An unwritable folder for root, who writes anywhere: the write probe of ``check_writable_dir`` is refused."""
    real = tempfile.mkstemp

    def refuse(*args, **kwargs):
        if str(kwargs.get("prefix", "")).startswith(".clinisynth-write-check"):
            raise PermissionError(13, "Permission denied")
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# ---- generate's and curate's own tables (the README's first clauses) --------------------------------------------

# phrase that names the case in the README -> (generate arguments after the description, env, setup)
# Every argument list is appended to ["generate", <description>, "--out", OUT]; "{tmp}" is the test's folder.
GENERATE_CASES: dict[str, list[dict]] = {
    "empty or whitespace description": [{"text": ""}, {"text": "   \n\t "}],
    "longer than `max_request_chars`": [{"text": "x" * 5000}, {"text": "pleural effusion " * 30,
                                                              "env": {"CLINISYNTH_MAX_REQUEST_CHARS": "100"}}],
    "nothing medical": [{"text": "the weather is lovely today and I bought bread"}],
    "modality the knowledge base does not cover": [{"text": "MRI of the left knee with a torn meniscus",
                                                    "message": "chest_xray"}],
    "unknown profile": [{"args": ["--profile", "huge"]}, {"env": {"CLINISYNTH_PROFILE": "huge"}}],
    "output dir that is a file": [{"out": "a-file"}],
    "is not writable": [{"out": "locked/out", "setup": "unwritable"}],
    "`-n` below 1": [{"args": ["-n", "0"]}, {"args": ["-n", "-3"]}],
    "steps outside 1..1000": [{"args": ["--steps", "0"]}, {"args": ["--steps", "1001"]}],
    "guidance outside 0..30": [{"args": ["--guidance", "-0.5"]}, {"args": ["--guidance", "30.5"]}],
    "`--max-rounds` outside 1..20": [{"args": ["--max-rounds", "0"]}, {"args": ["--max-rounds", "21"]}],
    "`--best-of` outside 1..16": [{"args": ["--best-of", "0"]}, {"args": ["--best-of", "17"]}],
    "`classifiers_dir` that is not a folder": [
        {"env": {"CLINISYNTH_CLASSIFIERS_DIR": "{tmp}/a-file"}, "message": "classifiers_dir"},
        {"env": {"CLINISYNTH_CLASSIFIERS_DIR": "{tmp}/nowhere"}, "message": "classifiers_dir"},
        {"env": {"CLINISYNTH_CLASSIFIERS_DIR": "{tmp}/a-file"}, "args": ["--profile", "demo"],
         "message": "classifiers_dir"},
    ],
    "threshold field that does not exist": [
        {"env": {"CLINISYNTH_VERIFIER_THRESHOLDS": json.dumps({"chest_xray": {"min_probability": 0.7}})},
         "message": "unknown field"},
        {"env": {"CLINISYNTH_VERIFIER_THRESHOLDS": json.dumps({"chest_xray": {"min_label_probability": 7}})},
         "message": "between 0 and 1"},
    ],
    "`memorisation_data` folder with no `manifest.csv`": [
        {"env": {"CLINISYNTH_MEMORISATION_DATA": json.dumps({"chest_xray": "{tmp}/empty-generator"})},
         "message": "memorisation_data.chest_xray"},
    ],
    "missing model": [{"args": ["--profile", "demo"], "env": {"CLINISYNTH_DEMO_GENERATOR": "{tmp}/empty-generator"},
                       "message": "CLINISYNTH_DEMO_GENERATOR"}],
    # "{lib}": tiny adapters that fit (chest_all, chest_pneumonia); "{bad}": broken ones (see build_adapter_libraries).
    "for another base model or text encoder": [
        {"args": ["--adapter", "{bad}/other_base"], "message": "trained on base model"},
        {"args": ["--adapter", "{bad}/other_encoder:0.5"], "message": "trained with text encoder"},
    ],
    "with missing keys": [{"args": ["--adapter", "{bad}/missing_keys"], "message": "missing key"}],
    "for a label it was not trained on": [{"args": ["--adapter", "{lib}/chest_pneumonia"],
                                           "message": "not trained on label 'pleural_effusion'"}],
    "two adapters that cannot combine": [
        {"args": ["--adapter", "{bad}/with_encoder", "--adapter", "{lib}/chest_all"], "message": "cannot combine"},
        {"args": ["--adapter", "{lib}/chest_all", "--adapter", "{bad}/other_length"], "message": "cannot combine"},
        {"args": ["--adapter", "{lib}/chest_all", "--adapter", "{lib}/chest_all:0.5"], "message": "named twice"},
    ],
    "an unknown adapter name": [
        {"args": ["--adapter", "chest_nothing", "--adapters-dir", "{lib}"], "message": "no adapter named 'chest_nothing'"},
        {"args": ["--adapter", "{tmp}/no-such-adapter"], "message": "does not exist"},
    ],
    "weight outside -4..4": [{"args": ["--adapter", "{lib}/chest_all:5"], "message": "from -4 to 4"},
                             {"args": ["--adapter", "{lib}/chest_all:heavy"], "message": "must be a number"}],
    "`adapters_dir` that is not a folder": [
        {"args": ["--adapters-dir", "{tmp}/a-file"], "message": "adapters_dir"},
        {"env": {"CLINISYNTH_ADAPTERS_DIR": "{tmp}/nowhere"}, "message": "adapters_dir"},
    ],
    # "dataset:HOW": OUT is a small generated dataset damaged as tests/_dataset_helpers.damage does it.
    "output dir made by `clinisynth prepare`": [{"setup": "dataset:prepared", "message": "made by `clinisynth prepare`"}],
    "zero-byte or truncated PNG": [{"setup": "dataset:zero_png", "message": "clinisynth doctor"},
                                   {"setup": "dataset:truncated_png", "message": "truncated PNG"}],
    "garbage or half line in `metadata.jsonl`": [{"setup": "dataset:garbage_line", "message": "line 2: not JSON"},
                                                 {"setup": "dataset:half_line", "message": "half a line"}],
    "foreign `manifest.csv` header": [{"setup": "dataset:foreign_header", "message": "foreign header"}],
    "damaged counters file": [{"setup": "dataset:damaged_counters", "message": "damaged counters file"}],
}


def build_adapter_libraries(cache_dir: Path, root: Path) -> dict[str, Path]:
    """``{lib}``: adapters for the tiny base; ``{bad}``: one per way an adapter can be wrong."""
    from _adapter_helpers import edit_card, make_adapter
    from safetensors.torch import load_file, save_file

    from clinisynth.generation.pipeline import Generator
    from clinisynth.generation.profiles import resolve_profile

    base = Generator.from_profile(resolve_profile("tiny", cache_dir=cache_dir), device="cpu")
    lib, bad = root / "adapters", root / "bad-adapters"
    make_adapter(lib / "chest_all", base, seed=2, labels=["normal", "pneumonia", "pleural_effusion"])
    make_adapter(lib / "chest_pneumonia", base, seed=3, labels=["pneumonia"])
    for name, seed in (("other_base", 4), ("other_encoder", 5), ("missing_keys", 6), ("with_encoder", 7),
                       ("other_length", 8)):
        make_adapter(bad / name, base, seed=seed, labels=["pleural_effusion"])
    card = json.loads((bad / "other_base" / "clinisynth_adapter.json").read_text())
    edit_card(bad / "other_base", base_signature=[card["base_signature"][0], *(v + 0.5 for v in card["base_signature"][1:])])
    edit_card(bad / "other_encoder",
              text_encoder_signature=[*card["text_encoder_signature"][:2], *(v + 0.5 for v in card["text_encoder_signature"][2:])])
    weights = bad / "missing_keys" / "pytorch_lora_weights.safetensors"
    save_file(dict(list(load_file(str(weights)).items())[2:]), str(weights))
    (bad / "with_encoder" / "text_encoder").mkdir()
    for file_name in ("adapter_model.safetensors", "adapter_config.json"):
        (bad / "with_encoder" / "text_encoder" / file_name).write_bytes((bad / "with_encoder" / file_name).read_bytes())
    edit_card(bad / "with_encoder", text_encoder_lora=True)
    edit_card(bad / "other_length", max_length=77)
    return {"{lib}": lib, "{bad}": bad}


def generate_argv(case: dict, *, out: str, places: dict[str, str]) -> list[str]:
    """The command line of one of :data:`GENERATE_CASES`."""
    def place(value: str) -> str:
        for key, path in places.items():
            value = value.replace(key, path)
        return value

    return ["generate", case.get("text", REQUEST), "--out", out, "-n", "1", *(place(arg) for arg in case.get("args", []))]


# ``clinisynth curate CAMPAIGN --out OUT``: the campaign file is the case's ``campaign`` (written to
# {tmp}/campaign.yaml); ``setup`` puts a journal in OUT first.
CAMPAIGN = 'profile: tiny\nsteps: 2\nitems:\n  - description: "normal chest radiograph"\n    count: 1\n'
CAMPAIGN_CASES: dict[str, list[dict]] = {
    "campaign file with an unknown key": [
        {"campaign": CAMPAIGN + "colour: red\n", "message": "campaign.yaml:6: unknown key 'colour'"},
        {"campaign": CAMPAIGN.replace("count: 1", "cuont: 1"), "message": "campaign.yaml:5: unknown key 'items[0].cuont'"},
        {"campaign": CAMPAIGN.replace("steps: 2", "steps: many"), "message": "campaign.yaml:2: steps"},
    ],
    "label the generator cannot draw": [
        {"campaign": "profile: demo\nitems:\n  - description: small left pneumothorax, PA chest radiograph\n"
                     "    count: 1\n", "message": "cannot draw 'pneumothorax' in chest_xray"},
    ],
    "campaign count below 1 or over the limit": [
        {"campaign": CAMPAIGN.replace("count: 1", "count: 0"), "message": "campaign.yaml:5: items[0].count: must be at least 1"},
        {"campaign": CAMPAIGN.replace("count: 1", "count: 100001"), "message": "must be at most 100000 (the limit)"},
        {"campaign": "profile: tiny\nitems_file: rows.csv\n", "rows": "description,count\nnormal chest radiograph,-2\n",
         "message": "rows.csv:2: count"},
    ],
    "campaign item that cannot be planned": [
        {"campaign": CAMPAIGN + '  - description: "the weather is lovely today"\n    count: 2\n',
         "message": "campaign.yaml:6: "},
    ],
    "output dir holding another campaign": [{"campaign": CAMPAIGN, "setup": "other-campaign",
                                             "message": "holds another campaign ('other'"}],
    "journal from another campaign": [
        {"campaign": CAMPAIGN, "setup": "foreign-journal", "message": "is from another campaign's output"},
        {"campaign": CAMPAIGN, "setup": "not-a-journal", "message": "is not a campaign journal"},
    ],
    "campaign file changed since its journal was made": [
        {"campaign": CAMPAIGN, "setup": "changed-campaign", "message": "items[0].count: 3 -> 1"},
    ],
    "unknown campaign adapter": [
        {"campaign": CAMPAIGN + "adapters: [no_such_adapter]\n", "message": "no adapter named 'no_such_adapter'"},
        {"campaign": CAMPAIGN + "    adapters: [no_such_adapter]\n",
         "message": "campaign.yaml:4: no adapter named 'no_such_adapter'"},
    ],
    # "args": options after ``--out OUT``; setup "no-ray": ``import ray`` fails, as without the extra.
    "`--workers` outside 1..1024": [{"campaign": CAMPAIGN, "args": ["--workers", "0"],
                                     "message": "--workers must be between 1 and 1024, got 0"},
                                    {"campaign": CAMPAIGN, "args": ["--workers", "5000"], "message": "got 5000"}],
    "an empty `--ray-address`": [{"campaign": CAMPAIGN, "args": ["--ray-address", " "],
                                  "message": "--ray-address is empty"}],
    "`--workers` above 1 or `--ray-address` without Ray installed": [
        {"campaign": CAMPAIGN, "args": ["--workers", "2"], "setup": "no-ray",
         "message": 'need Ray, which is not installed; install it with pip install "clinisynth[ray]"'},
        {"campaign": CAMPAIGN, "args": ["--ray-address", "auto"], "setup": "no-ray", "message": "need Ray"},
    ],
}


def journal_setup(setup: str, out: Path, campaign: Path) -> None:
    from clinisynth.curation.journal import Journal, PlannedItem, journal_path
    from clinisynth.curation.spec import load_campaign

    path = journal_path(out)
    if setup == "not-a-journal":
        path.parent.mkdir(parents=True)
        path.write_text("a note, not a database\n" * 20, encoding="utf-8")
        return
    source = campaign.parent / "made-from" / campaign.name  # the same file name: rows name their file
    source.parent.mkdir()
    source.write_text(CAMPAIGN.replace("count: 1", "count: 3") if setup == "changed-campaign" else CAMPAIGN,
                      encoding="utf-8")
    loaded = load_campaign(source)
    name = {"other-campaign": "other"}.get(setup, "campaign")
    item = PlannedItem(item=1, key="1", source="campaign.yaml", line=4, description="normal chest radiograph",
                       modality="chest_xray", label="normal", count=1, seed=5)
    with Journal.create(path, name=name, fingerprint=loaded.fingerprint(), canonical=loaded.canonical(),
                        parameters={}, items=[item]) as journal:
        if setup == "foreign-journal":  # it records an image and a run that are not in this output dir
            (chunk,) = journal.open_chunks(16)
            chunk = journal.start_run(chunk, RUN_ID)
            journal.finish_run(chunk, status="complete", stored={0: ("chest_xray/normal/normal_000001.png", 5)},
                               seconds=1.0)
    source.unlink()
    source.parent.rmdir()
