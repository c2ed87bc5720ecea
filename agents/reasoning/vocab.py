"""General clinical vocabulary that is not a knowledge record: sides, severity words, modality
families and body regions, normal-study phrases, assertion cues and common abbreviations.

The knowledge records hold the concepts; this module holds the function words around them.
"""

from __future__ import annotations

import re

# --- token normalisation (shared by patterns and text, so it only has to be consistent) ---------

_IRREGULAR = {
    "emboli": "embolus",
    "calculi": "calculus",
    "nuclei": "nucleus",
    "bronchi": "bronchus",
    "vertebrae": "vertebra",
    "sulci": "sulcus",
    "foci": "focus",
    "hila": "hilum",
    "hilar": "hilar",
    "diverticula": "diverticulum",
    "metastases": "metastasis",
    "bullae": "bulla",
    "lacunae": "lacuna",
    "drusen": "drusen",
    "nevi": "nevus",
    "naevi": "nevus",
    "naevus": "nevus",
    "atelectases": "atelectasis",
}


def normalize_word(word: str) -> str:
    """Lower-case, singular, American spelling (roughly): ``Effusions`` -> ``effusion``, ``oedema`` -> ``edema``."""
    word = word.lower()
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) > 4 and word.isalpha():
        if word.endswith("ies"):
            word = word[:-3] + "y"
        elif word.endswith("sses"):
            word = word[:-2]
        elif word.endswith("ses") and not word.endswith("uses"):
            word = word[:-2] + "is"
        elif word.endswith("s") and not word.endswith(("ss", "us", "is", "ous")):
            word = word[:-1]
        elif word.endswith("ae"):
            word = word[:-1]
        # British -> American; applied to both sides of the match, so over-reach is harmless.
        word = word.replace("ae", "e").replace("oe", "e")
        if word.endswith("our"):
            word = word[:-3] + "or"
        if word.endswith("tre"):
            word = word[:-3] + "ter"
        word = re.sub(r"is(e|ed|ing|ation)$", r"iz\1", word)
    return word


# --- sides --------------------------------------------------------------------------------------

SIDE_WORDS: dict[str, str] = {
    "right": "right",
    "rt": "right",
    "right-sided": "right",
    "dextro": "right",
    "left": "left",
    "lt": "left",
    "left-sided": "left",
    "bilateral": "bilateral",
    "bilaterally": "bilateral",
    "both": "bilateral",
    "bibasilar": "bilateral",
    "bibasal": "bilateral",
    "bibasally": "bilateral",
    "bibasilarly": "bilateral",
    "biapical": "bilateral",
    "b/l": "bilateral",
    "bilat": "bilateral",
}
#: Case-sensitive side tokens (ophthalmology eye abbreviations, telegraphic R / L).
SIDE_ORTH: dict[str, str] = {"R": "right", "L": "left", "OD": "right", "OS": "left", "OU": "bilateral", "RT": "right", "LT": "left"}
#: Multi-word side phrases (matched before single words).
SIDE_PHRASES: dict[str, str] = {
    "right and left": "bilateral",
    "left and right": "bilateral",
    "both sides": "bilateral",
    "both lungs": "bilateral",
    "both eyes": "bilateral",
    "both breasts": "bilateral",
    "both hemispheres": "bilateral",
    "right eye": "right",
    "left eye": "left",
    "right side": "right",
    "left side": "left",
    "right sided": "right",
    "left sided": "left",
}

# --- severity -----------------------------------------------------------------------------------

SEVERITY_WORDS: dict[str, str] = {
    "trace": "mild",
    "minimal": "mild",
    "minimally": "mild",
    "small": "mild",
    "tiny": "mild",
    "mild": "mild",
    "mildly": "mild",
    "slight": "mild",
    "slightly": "mild",
    "subtle": "mild",
    "faint": "mild",
    "moderate": "moderate",
    "moderately": "moderate",
    "medium": "moderate",
    "moderate-sized": "moderate",
    "large": "severe",
    "severe": "severe",
    "severely": "severe",
    "massive": "severe",
    "extensive": "severe",
    "marked": "severe",
    "markedly": "severe",
    "huge": "severe",
    "big": "severe",
    "advanced": "severe",
    "sizeable": "severe",
    "sizable": "severe",
    "considerable": "severe",
    "tension": "severe",
}
# Left out on purpose (they look like sizes but are not): "minor" (the minor fissure), "early" (a stage
# of time, not of size), "intermediate" (MRI signal intensity), "gross" ("grossly normal").
SEVERITY_RANK = {"mild": 1, "moderate": 2, "severe": 3}

#: Size words that are part of a name, not a size ("small vessel disease", "small cell carcinoma").
SIZE_WORD_COMPOUNDS = {
    ("small", "vessel"), ("small", "airway"), ("small", "cell"), ("large", "cell"), ("large", "vessel"),
    ("large", "airway"), ("minimal", "change"), ("small", "bowel"), ("large", "bowel"),
}

#: Words that say how a finding is spread, not how bad it is ("patchy opacity" is not moderate).
#: A record's severity scale that lists one of them is not used for that word.
DISTRIBUTION_WORDS = {
    "patchy", "scattered", "multifocal", "multilobar", "focal", "diffuse", "diffusely", "widespread", "confluent",
    "peripheral", "central", "perihilar", "basal", "bibasilar", "apical", "streaky", "linear", "nodular", "reticular",
    "reticulonodular", "interstitial", "alveolar", "airspace", "ill-defined", "hazy", "bilateral", "unilateral",
    "segmental", "subsegmental", "lobar", "multiple", "several", "numerous",
}
#: Record severity words kept although listed above: there the spread or count is the recognised grade
#: (pulmonary embolism: subsegmental / segmental / lobar / central; Fazekas: punctate / confluent;
#: AREDS drusen: confluent; the 4-2-1 rule counts retinal haemorrhages).
DISTRIBUTION_GRADES = {
    "finding.pulmonary_embolism", "finding.small_vessel_disease", "finding.drusen", "finding.retinal_haemorrhage",
    "finding.dot_blot_haemorrhages",
}
GRADE_RE = re.compile(r"\b(?:who\s+)?(grade|stage)\s*(iv|iii|ii|i|[1-4])\b", re.IGNORECASE)
GRADE_SEVERITY = {"1": "mild", "i": "mild", "2": "moderate", "ii": "moderate", "3": "severe", "iii": "severe", "4": "severe", "iv": "severe"}

#: Words that state a structure is enlarged ("the heart is large", "heart size mildly increased"); with the
#: structure in the same clause they assert the finding the knowledge names for its enlargement.
ENLARGEMENT_WORDS = {"enlarged", "large", "enlargement", "increased", "increase", "widened", "wide", "big"}
#: Phrases that put a size at the edge of enlargement: the finding, mild ("borderline heart size"). A size
#: "at the upper limits of normal" is still normal, as radiologists read it.
BORDERLINE_PHRASES = [("borderline",)]

# --- modality families and body regions (for "knee MRI" -> unsupported) ------------------------

FAMILY_WORDS: dict[str, str] = {
    "ct": "ct",
    "cat scan": "ct",
    "computed tomography": "ct",
    "ct scan": "ct",
    "cta": "ct",
    "mdct": "ct",
    "mri": "mri",
    "mr": "mri",
    "mri scan": "mri",
    "magnetic resonance": "mri",
    "magnetic resonance imaging": "mri",
    "mra": "mri",
    "x-ray": "xray",
    "xray": "xray",
    "x ray": "xray",
    "radiograph": "xray",
    "radiography": "xray",
    "plain film": "xray",
    "film": "xray",
    "xr": "xray",
    "roentgenogram": "xray",
    "ultrasound": "us",
    "ultrasonography": "us",
    "sonography": "us",
    "sonogram": "us",
    "us": "us",
    "echography": "us",
    "mammogram": "mammography",
    "mammography": "mammography",
    "mammographic": "mammography",
    "tomosynthesis": "mammography",
    "pet": "pet",
    "pet-ct": "pet",
    "pet/ct": "pet",
    "spect": "nuclear medicine",
    "scintigraphy": "nuclear medicine",
    "bone scan": "nuclear medicine",
    "echocardiogram": "echocardiography",
    "echocardiography": "echocardiography",
    "fluoroscopy": "fluoroscopy",
    "angiogram": "angiography",
    "endoscopy": "endoscopy",
    "colonoscopy": "endoscopy",
    "histology": "histopathology",
    "histopathology": "histopathology",
}
#: Families whose upper-case abbreviation must be matched case-sensitively (``US`` vs "us").
FAMILY_ORTH = {"US": "us", "MR": "mri", "XR": "xray", "PET": "pet", "CT": "ct", "MRI": "mri"}

REGION_WORDS: dict[str, str] = {
    "chest": "chest",
    "thorax": "chest",
    "thoracic": "chest",
    "lung": "chest",
    "lungs": "chest",
    "pulmonary": "chest",
    "brain": "brain",
    "head": "brain",
    "cranial": "brain",
    "intracranial": "brain",
    "cerebral": "brain",
    "neuro": "brain",
    "breast": "breast",
    "breasts": "breast",
    "mammary": "breast",
    "eye": "eye",
    "retina": "eye",
    "retinal": "eye",
    "macula": "eye",
    "macular": "eye",
    "ocular": "eye",
    "skin": "skin",
    "cutaneous": "skin",
    "knee": "knee",
    "knees": "knee",
    "shoulder": "shoulder",
    "hip": "hip",
    "hips": "hip",
    "ankle": "ankle",
    "wrist": "wrist",
    "elbow": "elbow",
    "hand": "hand",
    "foot": "foot",
    "feet": "foot",
    "spine": "spine",
    "spinal": "spine",
    "lumbar": "spine",
    "cervical": "spine",
    "abdomen": "abdomen",
    "abdominal": "abdomen",
    "pelvis": "pelvis",
    "pelvic": "pelvis",
    "liver": "liver",
    "hepatic": "liver",
    "kidney": "kidney",
    "kidneys": "kidney",
    "renal": "kidney",
    "pancreas": "pancreas",
    "thyroid": "thyroid",
    "neck": "neck",
    "sinus": "sinuses",
    "sinuses": "sinuses",
    "prostate": "prostate",
    "cardiac": "heart",
    "heart": "heart",
    "musculoskeletal": "musculoskeletal",
    "pregnancy": "obstetric",
    "obstetric": "obstetric",
    "fetal": "obstetric",
    "scrotal": "scrotum",
    "testicular": "scrotum",
    "dental": "teeth",
    "bowel": "bowel",
    "colon": "bowel",
    "leg": "leg",
    "arm": "arm",
    "femur": "leg",
    "face": "face",
    "orbit": "orbit",
}
#: Words before or after a study's name that make it another study than the one described: a comparison,
#: a prior, a recommendation ("unchanged since the abdomen CT", "a bone scan is suggested").
REFERENCE_STUDY_BEFORE = {
    "since", "compared", "comparison", "prior", "previous", "recent", "earlier", "outside", "last", "from",
    "correlation", "correlate", "recommend", "recommended", "consider", "suggest", "dedicated", "further", "followup",
    "follow-up",
}
REFERENCE_STUDY_AFTER = {"recommended", "suggested", "advised", "dated", "report"}

# Which (family, region) a modality covers, and the modality a bare family word means, are data: the
# modality records' family / regions / default_for_family (knowledge/data/modalities.yaml).

#: Families that are never covered, whatever the region.
UNCOVERED_FAMILIES = {"mammography", "pet", "nuclear medicine", "echocardiography", "fluoroscopy", "angiography", "endoscopy", "histopathology"}

# --- normal study ---------------------------------------------------------------------------------

NORMAL_PHRASES = [
    "normal",
    "normal study",
    "normal examination",
    "normal exam",
    "unremarkable",
    "unremarkable study",
    "within normal limits",
    "wnl",
    "no abnormality",
    "no abnormalities",
    "no abnormality detected",
    "no abnormal findings",
    "no acute abnormality",
    "no acute abnormalities",
    "no acute findings",
    "no acute finding",
    "no acute process",
    "no acute disease",
    "no acute pathology",
    "no active disease",
    "no significant abnormality",
    "no significant abnormalities",
    "no pathology",
    "no pathological findings",
    "no lesion",
    "no finding",
    "no findings",
    "nad",
    "lungs are clear",
    "lungs clear",
    "clear lungs",
    "healthy",
    "negative study",
    "negative examination",
    "negative exam",
    "no evidence of disease",
    "no acute cardiopulmonary process",
    "no acute cardiopulmonary abnormality",
    "no acute cardiopulmonary disease",
    "no acute cardiopulmonary findings",
    "no acute cardiopulmonary finding",
    "no active cardiopulmonary disease",
    "no evidence of acute cardiopulmonary disease",
    "no evidence of active disease",
    "no acute pulmonary disease",
    "no active pulmonary disease",
    "no acute intracranial abnormality",
    "no acute intracranial process",
    "no retinopathy",
    "benign appearance",
]

# --- assertion cues added to medspaCy's default ConText rules ------------------------------------

#: (literal, category, direction). RESOLVED maps to absent; POSSIBLE / HYPOTHETICAL to uncertain.
EXTRA_CONTEXT_RULES: list[tuple[str, str, str]] = [
    # negation, forward
    ("no evidence of", "NEGATED_EXISTENCE", "FORWARD"),
    ("no sign of", "NEGATED_EXISTENCE", "FORWARD"),
    ("no signs of", "NEGATED_EXISTENCE", "FORWARD"),
    ("no definite", "NEGATED_EXISTENCE", "FORWARD"),
    ("no obvious", "NEGATED_EXISTENCE", "FORWARD"),
    ("no visible", "NEGATED_EXISTENCE", "FORWARD"),
    ("no features of", "NEGATED_EXISTENCE", "FORWARD"),
    ("negative for", "NEGATED_EXISTENCE", "FORWARD"),
    ("free of", "NEGATED_EXISTENCE", "FORWARD"),
    ("without", "NEGATED_EXISTENCE", "FORWARD"),
    ("w/o", "NEGATED_EXISTENCE", "FORWARD"),
    ("absent", "NEGATED_EXISTENCE", "FORWARD"),
    ("nor", "NEGATED_EXISTENCE", "FORWARD"),
    ("neither", "NEGATED_EXISTENCE", "FORWARD"),
    ("excluded", "NEGATED_EXISTENCE", "FORWARD"),
    ("sin", "NEGATED_EXISTENCE", "FORWARD"),
    ("kein", "NEGATED_EXISTENCE", "FORWARD"),
    ("keine", "NEGATED_EXISTENCE", "FORWARD"),
    ("pas de", "NEGATED_EXISTENCE", "FORWARD"),
    ("no longer", "NEGATED_EXISTENCE", "FORWARD"),
    # negation, backward
    ("absent", "NEGATED_EXISTENCE", "BACKWARD"),
    ("not seen", "NEGATED_EXISTENCE", "BACKWARD"),
    ("is not seen", "NEGATED_EXISTENCE", "BACKWARD"),
    ("not identified", "NEGATED_EXISTENCE", "BACKWARD"),
    ("not demonstrated", "NEGATED_EXISTENCE", "BACKWARD"),
    ("not present", "NEGATED_EXISTENCE", "BACKWARD"),
    ("not visualized", "NEGATED_EXISTENCE", "BACKWARD"),
    ("not visualised", "NEGATED_EXISTENCE", "BACKWARD"),
    ("not detected", "NEGATED_EXISTENCE", "BACKWARD"),
    ("not appreciated", "NEGATED_EXISTENCE", "BACKWARD"),
    ("not evident", "NEGATED_EXISTENCE", "BACKWARD"),
    ("not noted", "NEGATED_EXISTENCE", "BACKWARD"),
    ("not observed", "NEGATED_EXISTENCE", "BACKWARD"),
    ("no longer seen", "NEGATED_EXISTENCE", "BACKWARD"),
    ("no longer visible", "NEGATED_EXISTENCE", "BACKWARD"),
    ("has been excluded", "NEGATED_EXISTENCE", "BACKWARD"),
    ("excluded", "NEGATED_EXISTENCE", "BACKWARD"),
    ("negative", "NEGATED_EXISTENCE", "BACKWARD"),
    (": none", "NEGATED_EXISTENCE", "BACKWARD"),
    (": absent", "NEGATED_EXISTENCE", "BACKWARD"),
    (": negative", "NEGATED_EXISTENCE", "BACKWARD"),
    ("- none", "NEGATED_EXISTENCE", "BACKWARD"),
    ("none", "NEGATED_EXISTENCE", "BACKWARD"),
    # resolved (absent on this image)
    ("resolved", "RESOLVED", "BIDIRECTIONAL"),
    ("resolution of", "RESOLVED", "FORWARD"),
    ("interval resolution of", "RESOLVED", "FORWARD"),
    ("has resolved", "RESOLVED", "BACKWARD"),
    ("have resolved", "RESOLVED", "BACKWARD"),
    ("has cleared", "RESOLVED", "BACKWARD"),
    ("have cleared", "RESOLVED", "BACKWARD"),
    ("now resolved", "RESOLVED", "BACKWARD"),
    # devices taken out are absent on this image ("interval removal of the ET tube", "catheter has been removed")
    ("removal of", "RESOLVED", "FORWARD"),
    ("interval removal of", "RESOLVED", "FORWARD"),
    ("removed", "RESOLVED", "BACKWARD"),
    ("has been removed", "RESOLVED", "BACKWARD"),
    ("have been removed", "RESOLVED", "BACKWARD"),
    ("was removed", "RESOLVED", "BACKWARD"),
    ("were removed", "RESOLVED", "BACKWARD"),
    # historical: old, healed or past disease is the story, not a current finding
    ("history of", "HISTORICAL", "FORWARD"),
    ("past history of", "HISTORICAL", "FORWARD"),
    ("known history of", "HISTORICAL", "FORWARD"),
    ("hx of", "HISTORICAL", "FORWARD"),
    ("old", "HISTORICAL", "FORWARD"),
    ("healed", "HISTORICAL", "FORWARD"),
    ("remote", "HISTORICAL", "FORWARD"),
    ("prior", "HISTORICAL", "FORWARD"),
    ("previous", "HISTORICAL", "FORWARD"),
    ("sequela of", "HISTORICAL", "FORWARD"),
    ("sequelae of", "HISTORICAL", "FORWARD"),
    ("residua of", "HISTORICAL", "FORWARD"),
    ("residuals of", "HISTORICAL", "FORWARD"),
    ("stigmata of", "HISTORICAL", "FORWARD"),
    ("previously treated", "HISTORICAL", "FORWARD"),
    ("status post treatment of", "HISTORICAL", "FORWARD"),
    # uncertainty, forward
    ("possible", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("possibly", "POSSIBLE_EXISTENCE", "FORWARD"),
    # "probable X" commits to X: the strongest hedge, read as stated (the cue is kept on the finding)
    ("probable", "PROBABLE_EXISTENCE", "FORWARD"),
    ("probably", "PROBABLE_EXISTENCE", "FORWARD"),
    ("likely", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("most likely", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("may represent", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("may be", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("could be", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("could represent", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("might represent", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("may reflect", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("cannot exclude", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("can not exclude", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("can't exclude", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("cannot rule out", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("can not rule out", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("not excluding", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("questionable", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("question of", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("?", "POSSIBLE_EXISTENCE", "BIDIRECTIONAL"),
    ("suspected", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("suspicion of", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("suspicious for", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("suspicious of", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("concerning for", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("worrisome for", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("suggestive of", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("suggests", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("suggesting", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("equivocal", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("indeterminate", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("presumed", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("presumably", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("query", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("differential includes", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("differential diagnosis includes", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("rule out", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("to rule out", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("evaluate for", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("evaluation for", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("assess for", "POSSIBLE_EXISTENCE", "FORWARD"),
    # "A versus B" weighs two readings: both are hedged, whichever comes first.
    ("versus", "POSSIBLE_EXISTENCE", "BIDIRECTIONAL"),
    ("vs", "POSSIBLE_EXISTENCE", "BIDIRECTIONAL"),
    ("vs.", "POSSIBLE_EXISTENCE", "BIDIRECTIONAL"),
    ("could reflect", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("might reflect", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("may indicate", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("could indicate", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("might indicate", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("may be due to", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("could be due to", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("may be secondary to", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("may be related to", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("features suggest", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("suggest", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("most concerning for", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("concern for", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("consider", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("considerations include", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("differential considerations include", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("differential diagnosis including", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("differential diagnosis include", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("differential including", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("differential of", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("is in the differential", "POSSIBLE_EXISTENCE", "BACKWARD"),
    ("are in the differential", "POSSIBLE_EXISTENCE", "BACKWARD"),
    ("correlate clinically for", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("clinically correlate for", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("correlate for", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("correlation for", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("to exclude", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("or possibly", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("posible", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("vermutlich", "POSSIBLE_EXISTENCE", "FORWARD"),
    ("verdacht auf", "POSSIBLE_EXISTENCE", "FORWARD"),
    # uncertainty, backward
    ("cannot be excluded", "POSSIBLE_EXISTENCE", "BACKWARD"),
    ("can not be excluded", "POSSIBLE_EXISTENCE", "BACKWARD"),
    ("cannot be ruled out", "POSSIBLE_EXISTENCE", "BACKWARD"),
    ("not excluded", "POSSIBLE_EXISTENCE", "BACKWARD"),
    ("not entirely excluded", "POSSIBLE_EXISTENCE", "BACKWARD"),
    ("not ruled out", "POSSIBLE_EXISTENCE", "BACKWARD"),
    ("is suspected", "POSSIBLE_EXISTENCE", "BACKWARD"),
    ("suspected", "POSSIBLE_EXISTENCE", "BACKWARD"),
    ("is likely", "POSSIBLE_EXISTENCE", "BACKWARD"),
    ("are likely", "POSSIBLE_EXISTENCE", "BACKWARD"),
    ("is possible", "POSSIBLE_EXISTENCE", "BACKWARD"),
    ("is not excluded", "POSSIBLE_EXISTENCE", "BACKWARD"),
    ("is questioned", "POSSIBLE_EXISTENCE", "BACKWARD"),
    ("not certain", "POSSIBLE_EXISTENCE", "BACKWARD"),
    ("is favored", "POSSIBLE_EXISTENCE", "BACKWARD"),
    # pseudo cues: look like negation but assert nothing about existence
    ("no change", "PSEUDO", "PSEUDO"),
    ("no significant change", "PSEUDO", "PSEUDO"),
    ("no interval change", "PSEUDO", "PSEUDO"),
    ("no increase", "PSEUDO", "PSEUDO"),
    ("no decrease", "PSEUDO", "PSEUDO"),
    ("no further", "PSEUDO", "PSEUDO"),
    ("not only", "PSEUDO", "PSEUDO"),
    ("without change", "PSEUDO", "PSEUDO"),
    ("without interval change", "PSEUDO", "PSEUDO"),
    ("without significant change", "PSEUDO", "PSEUDO"),
    ("without significant interval change", "PSEUDO", "PSEUDO"),
    ("without appreciable change", "PSEUDO", "PSEUDO"),
    ("no significant interval change", "PSEUDO", "PSEUDO"),
    ("no appreciable change", "PSEUDO", "PSEUDO"),
    ("not significantly changed", "PSEUDO", "PSEUDO"),
    ("no doubt", "PSEUDO", "PSEUDO"),
    # a device whose tip is out of view is still there ("NG tube below the diaphragm, tip not seen")
    ("tip not seen", "PSEUDO", "PSEUDO"),
    ("tip is not seen", "PSEUDO", "PSEUDO"),
    ("tip not visualized", "PSEUDO", "PSEUDO"),
    ("tip is not visualized", "PSEUDO", "PSEUDO"),
    ("tip not imaged", "PSEUDO", "PSEUDO"),
    ("tip is not imaged", "PSEUDO", "PSEUDO"),
    ("not unlikely", "PSEUDO", "PSEUDO"),
    # scope ends
    ("however", "TERMINATE", "TERMINATE"),
    ("although", "TERMINATE", "TERMINATE"),
    ("though", "TERMINATE", "TERMINATE"),
    ("except", "TERMINATE", "TERMINATE"),
    ("except for", "TERMINATE", "TERMINATE"),
    ("otherwise", "TERMINATE", "TERMINATE"),
    ("whereas", "TERMINATE", "TERMINATE"),
    ("while", "TERMINATE", "TERMINATE"),
    ("yet", "TERMINATE", "TERMINATE"),
    ("there is", "TERMINATE", "TERMINATE"),
    ("there are", "TERMINATE", "TERMINATE"),
    ("with", "TERMINATE", "TERMINATE"),
    ("consistent with", "TERMINATE", "TERMINATE"),
    ("compatible with", "TERMINATE", "TERMINATE"),
    ("aber", "TERMINATE", "TERMINATE"),
    ("pero", "TERMINATE", "TERMINATE"),
    ("mais", "TERMINATE", "TERMINATE"),
]
#: Default medspaCy rules dropped because the rules above replace them with a better category.
DROPPED_DEFAULT_LITERALS = {"evaluate for", "test for", "checked for", "resolved", "now resolved", "free", ": no", "history"}
#: Cues whose scope is a few words only: a bare "?" ("? LLL pneumonia") and the words that date a
#: finding ("old left rib fractures", "prior granulomatous disease"), which modify the phrase they open.
SHORT_SCOPE_CUES = {"?": 4, "resolved": 4, "old": 4, "healed": 4, "remote": 4, "prior": 4, "previous": 4, "previously treated": 4}
#: Dating words modify the one finding they open ("old rib fractures and pleural thickening").
SINGLE_TARGET_CUES = {"old", "healed", "remote", "prior", "previous", "previously treated"}

#: After a finding, these words start a new positive statement: a forward cue before that finding
#: does not reach past them ("no effusion, large pneumothorax"), unless "or" / "nor" links them.
RESTART_WORDS = set(SEVERITY_WORDS) | set(SIDE_WORDS) | {"new", "there", "increasing", "increased", "worsening", "developing", "persistent", "residual"}

# --- diagnoses and the observations they explain -------------------------------------------------

#: Phrases that introduce the diagnosis a description arrives at ("..., consistent with active CNV").
#: A finding right after one (or in an IMPRESSION section) is the stated diagnosis: the label prefers it.
DIAGNOSIS_PHRASES = [
    "consistent with", "compatible with", "in keeping with", "diagnostic of", "characteristic of", "typical of",
    "in keeping", "likely represents", "likely representing", "most likely representing", "represents", "representing",
    "suggestive of", "suspicious for", "suspicious of", "concerning for", "worrisome for", "highly suggestive of",
    "most consistent with", "likely reflecting", "may represent", "may reflect", "could represent", "probably",
    "likely", "most likely", "probable", "favored to represent", "favoured to represent", "c/w", "could reflect",
    "most concerning for", "concern for", "may indicate", "could indicate", "correlate clinically for",
    "clinically correlate for", "correlate for",
]
#: Words naming how something looks, not what it is: a finding matched through a phrase with one of
#: them ("white matter hyperintensities" -> small vessel disease) is an observation, and when the same
#: sentence attributes it to a diagnosis ("..., consistent with demyelination") it is not kept apart.
APPEARANCE_WORDS = {
    "hyperintensity", "hyperintense", "hypointensity", "hypointense", "hyperdensity", "hyperdense", "hypodensity",
    "hypodense", "hyperreflective", "hyporeflective", "hyperechoic", "hypoechoic", "signal", "enhancement", "enhancing",
}
#: Abbreviations of such appearance phrases.
APPEARANCE_ABBREVIATIONS = {"WMH", "WMHs", "T2H"}
#: Section headers after which findings are the radiologist's conclusion.
IMPRESSION_HEADERS = {"impression", "impressions", "conclusion", "conclusions", "opinion", "summary"}
#: Organ and region words: a finding named "<organ> <head>" ("brain metastasis") is the one meant by the
#: bare head word ("metastasis") in a study of that modality.
ORGAN_WORDS = set(REGION_WORDS) | {
    "intracranial", "intraparenchymal", "cerebellar", "brainstem", "pulmonary", "lung", "lungs", "breast", "mammary",
    "retinal", "macular", "choroidal", "skin", "cutaneous", "chest", "thoracic", "cerebral", "brain", "ocular",
}
#: Place words that, with the organ words, may be dropped to re-read another modality's finding
#: ("hilar mass" on a chest CT -> lung mass); not used for bare head words ("hilar prominence").
PLACE_MODIFIERS = {"hilar", "perihilar", "parenchymal", "apical", "basal"}

#: Head words too generic to stand for a finding on their own ("lesion" is not "lung lesion").
GENERIC_HEADS = {
    "lesion", "abnormality", "disease", "change", "finding", "process", "pathology", "opacity", "density", "area",
    "focus", "prominence", "enlargement",
    # "lung infection" is pneumonia and "intracranial bleeding" a haemorrhage, but an infection, a bleed or
    # hypertension on their own name no organ's finding ("granulomatous infection", "systemic hypertension").
    "infection", "bleeding", "bleed", "hypertension", "failure", "congestion", "marking", "inflammation",
}

# --- builtin abbreviations (used when the records lack them) and their expansions ---------------

BUILTIN_ABBREVIATIONS: dict[str, str] = {
    "RLL": "right lower lobe",
    "RML": "right middle lobe",
    "RUL": "right upper lobe",
    "LLL": "left lower lobe",
    "LUL": "left upper lobe",
    "PTX": "pneumothorax",
    "GGO": "ground-glass opacity",
    "GGOs": "ground-glass opacity",
    "PE": "pulmonary embolism",
    "ILD": "interstitial lung disease",
    "DR": "diabetic retinopathy",
    "NPDR": "non-proliferative diabetic retinopathy",
    "PDR": "proliferative diabetic retinopathy",
    "DME": "diabetic macular edema",
    "CME": "cystoid macular edema",
    "CNV": "choroidal neovascularization",
    "CNVM": "choroidal neovascularization",
    "AMD": "age-related macular degeneration",
    "ARMD": "age-related macular degeneration",
    "ERM": "epiretinal membrane",
    "SRF": "subretinal fluid",
    "IRF": "intraretinal fluid",
    "PED": "pigment epithelial detachment",
    "BCC": "basal cell carcinoma",
    "SCC": "squamous cell carcinoma",
    "AK": "actinic keratosis",
    "SK": "seborrheic keratosis",
    "BKL": "benign keratosis",
    "DF": "dermatofibroma",
    "ICH": "intracranial hemorrhage",
    "SAH": "subarachnoid hemorrhage",
    "SDH": "subdural hematoma",
    "EDH": "epidural hematoma",
    "GBM": "glioblastoma",
    "MS": "multiple sclerosis",
    "NPH": "normal pressure hydrocephalus",
    "LAD": "lymphadenopathy",
    "ETT": "endotracheal tube",
    "NGT": "nasogastric tube",
    "CVC": "central venous catheter",
    "PICC": "peripherally inserted central catheter",
    "ICD": "implantable cardioverter-defibrillator",
    "CP": "costophrenic",
}

#: Words that never start a retrieval query: clinical history, symptoms, report boilerplate.
NON_IMAGING_WORDS = {
    "cough", "fever", "pain", "dyspnea", "dyspnoea", "sob", "shortness", "breath", "headache", "trauma", "fall",
    "history", "patient", "year", "years", "old", "male", "female", "man", "woman", "indication", "clinical",
    "comparison", "compared", "prior", "previous", "study", "exam", "examination", "image", "images", "imaging",
    "findings", "finding", "impression", "technique", "report", "seen", "noted", "identified", "present", "evidence",
    "shows", "showing", "show", "demonstrates", "demonstrating", "demonstrated", "reveals", "revealed", "visible",
    "appearance", "appears", "appear", "stable", "unchanged", "interval", "change", "changes", "new", "since",
    "suspected", "suspicion", "suspicious", "possible", "likely", "probable", "concerning", "consistent", "compatible", "query",
    "generate", "create", "synthetic", "please", "view", "views", "scan", "photo", "photograph", "picture",
    "acute", "chronic", "significant", "focal", "diffuse", "mild", "moderate", "severe", "small", "large",
    "right", "left", "bilateral", "upper", "lower", "middle", "side", "sided", "grade", "stage", "normal",
    "unremarkable", "clear", "limits", "within", "evaluation", "evaluate", "assess", "follow", "followup", "post",
    "status", "known", "diabetic", "predominant", "predominantly", "distribution", "pattern", "colour", "color",
    "blue", "black", "white", "brown", "pink", "red", "grey", "gray", "asymmetric", "symmetric", "pigmented", "irregular",
    "regular", "lesion", "lesions", "area", "areas", "region", "position", "good", "recommend", "recommended", "correlation", "diabetes", "hypertension", "hypertensive", "smoker", "age", "aged", "yo",
    "admission", "admitted", "surgery", "postoperative", "treatment", "therapy", "rule", "exclude",
}
