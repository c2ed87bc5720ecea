"""``create_app``: the FastAPI app of ``clinisynth serve`` (API under ``/api``, pages from ``clinisynth/web``)."""

from __future__ import annotations

import asyncio
import contextlib
from importlib.resources import files
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from clinisynth.server.deps import caller
from clinisynth.server.errors import install_error_handlers
from clinisynth.server.jobs import JobManager
from clinisynth.server.security import DEFAULT_MAX_BODY_BYTES, BodyLimit

WEB_DIR = Path(str(files("clinisynth") / "web"))


def create_app(
    *,
    out: Path | str,
    settings=None,
    profile: str | None = None,
    token: str | None = None,
    queue_size: int = 8,
    max_running_per_token: int = 2,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    warm: bool = True,
) -> FastAPI:
    """The web app over the output dir ``out``.

    Args:
        out: the output dir (ordered storage) jobs write into and runs are listed from.
        settings: :class:`~clinisynth.settings.Settings` of every run (read from the environment when ``None``).
        profile: the model profile of every job (the settings' when ``None``).
        token: when set, every ``/api`` route and ``/docs`` needs ``Authorization: Bearer TOKEN``.
        queue_size: jobs that may wait; more get 503.
        max_running_per_token: queued or running jobs per token; more get 429.
        max_body_bytes: larger request bodies get 413.
        warm: load the planner and build the profile at startup (else at the first request).
    """
    from clinisynth.generation.storage import check_output_dir
    from clinisynth.settings import Settings

    settings = settings or Settings()
    manager = JobManager(out=check_output_dir(Path(out)), settings=settings, profile=profile, queue_size=queue_size,
                         max_running_per_token=max_running_per_token)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if warm:
            await asyncio.to_thread(manager.warm)
        manager.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            await asyncio.to_thread(manager.stop)

    app = FastAPI(title="clinisynth", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json",
                  description="Plan clinical descriptions, generate verified synthetic images, review their traces.")
    app.state.settings, app.state.jobs, app.state.token = settings, manager, token
    install_error_handlers(app)

    from clinisynth.server import routes_jobs, routes_plan, routes_runs

    for module in (routes_plan, routes_jobs, routes_runs):
        app.include_router(module.router)
    # The OpenAPI schema route is public in FastAPI: guard it like every other route.
    app.router.routes = [route for route in app.router.routes if getattr(route, "path", None) != "/api/openapi.json"]

    @app.get("/api/openapi.json", include_in_schema=False, dependencies=[Depends(caller)])
    def openapi() -> dict:
        return app.openapi()

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(caller)])
    def docs():
        # Swagger UI's script and style from our own package: no CDN.
        return get_swagger_ui_html(openapi_url="/api/openapi.json", title="clinisynth API",
                                   swagger_js_url="/static/vendor/swagger-ui-bundle.js",
                                   swagger_css_url="/static/vendor/swagger-ui.css",
                                   swagger_favicon_url="/static/favicon.svg")

    # The pages are static shells with no data in them; everything they show comes from the /api routes.
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def index():
        return RedirectResponse("/generate")

    @app.get("/generate", include_in_schema=False)
    def generate_page():
        return FileResponse(WEB_DIR / "generate.html")

    @app.get("/review", include_in_schema=False)
    def review_page():
        return FileResponse(WEB_DIR / "review.html")

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    return app
