"""``/v1/templates``: which templates there are, and what one gives for some data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from notifier.api.auth import CallerDep
from notifier.api.openapi import RATE_LIMIT, RETRY_AFTER, WWW_AUTHENTICATE, documented
from notifier.api.problem import ApiError
from notifier.api.responses import JSON
from notifier.api.services import ServicesDep
from notifier.schemas import rendering_problem
from notifier.templates import Rendered, TemplateError, Templates

router = APIRouter(prefix="/v1/templates", tags=["templates"])

TemplateName = Annotated[str, Path(description="The template's name (its folder's).")]
#: Every route here checks the API key and takes a rate-limit token; none uses the store.
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: documented("Missing or unknown API key.", WWW_AUTHENTICATE),
    422: documented("The request is invalid.", RATE_LIMIT),
    429: documented(
        "Rate limit of this API key reached; retry after `Retry-After` seconds.",
        RATE_LIMIT,
        RETRY_AFTER,
    ),
}


class TemplateInfo(BaseModel):
    name: str
    variables: list[str] = Field(description="The top-level names the template reads from data.")
    parts: list[str] = Field(description="`text`, `html`, or both: the bodies it gives.")


class TemplateList(BaseModel):
    items: list[TemplateInfo]


class PreviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: dict[str, Any] = Field(default_factory=dict)


class TemplatePreview(BaseModel):
    template: str
    subject: str
    text: str | None
    html: str | None


def render_or_refuse(
    templates: Templates, name: str, data: Mapping[str, Any], *, unknown: int
) -> Rendered:
    """What template ``name`` gives for ``data``, checked as a written message is; else
    the API error naming what is wrong (``unknown`` is the status for no such template)."""
    try:
        rendered = templates.library.render(name, data)
    except TemplateError as exc:
        status = unknown if exc.code == "unknown_template" else 422
        raise ApiError(status, exc.code, str(exc)) from None
    problem = rendering_problem(rendered)
    if problem is not None:
        raise ApiError(422, "template_render_failed", problem)
    return rendered


@router.get(
    "",
    response_model=TemplateList,
    summary="List the templates",
    operation_id="list_templates",
    responses={**_ERRORS, 200: documented("Every template, by name.", RATE_LIMIT, model=None)},
)
async def list_templates(services: ServicesDep, caller: CallerDep) -> JSON:
    """The templates read from ``NOTIFIER_TEMPLATE_DIR`` (at start-up or the last SIGHUP)."""
    items = [
        {"name": t.name, "variables": list(t.variables), "parts": t.parts}
        for t in services.templates.library.all()
    ]
    return JSON({"items": items})


@router.post(
    "/{name}/preview",
    response_model=TemplatePreview,
    summary="Render a template without sending anything",
    operation_id="preview_template",
    responses={
        **_ERRORS,
        200: documented("What a notification with this data would say.", RATE_LIMIT, model=None),
        400: documented("Unparsable JSON.", RATE_LIMIT),
        404: documented("No such template.", RATE_LIMIT),
        413: documented("The request body is too large."),
        422: documented(
            "The request is invalid, the data lacks a variable the template reads, or the "
            "template cannot be rendered with it.",
            RATE_LIMIT,
        ),
    },
)
async def preview_template(
    name: TemplateName, body: PreviewRequest, services: ServicesDep, caller: CallerDep
) -> JSON:
    """The subject and bodies ``POST /v1/notifications`` would store for this ``data``;
    nothing is stored."""
    rendered = render_or_refuse(services.templates, name, body.data, unknown=404)
    return JSON(
        {
            "template": rendered.template,
            "subject": rendered.subject,
            "text": rendered.text,
            "html": rendered.html,
        }
    )
