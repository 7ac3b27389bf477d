"""Templates: the files, the sandbox, and notifications and previews rendered from them."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest

from notifier.cli import main
from notifier.errors import ConfigError
from notifier.templates import TemplateError, TemplateLibrary
from tests.conftest import (
    DEADLINE_SECONDS,
    STORES,
    MakeSettings,
    notification,
    running_app,
    wait_for,
)
from tests.service import ServiceProcess, spawn
from tests.smtp_server import DROP_AFTER_ACCEPT, ScriptedHandler

REPO = Path(__file__).resolve().parent.parent
WELCOME_DATA = {"name": "Ada", "product": "Acme", "login_url": "https://acme.example/login"}


def write_template(
    directory: Path,
    name: str,
    subject: str = "Hello {{ name }}",
    text: str | None = "Hi {{ name }}, welcome to {{ product }}.\n",
    html: str | None = "<p>Hi {{ name }}</p>\n",
) -> Path:
    folder = directory / name
    folder.mkdir(parents=True, exist_ok=True)
    for part, content in (("subject.txt", subject), ("body.txt", text), ("body.html", html)):
        path = folder / part
        if content is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(content)
    return folder


def templated(template: str = "greeting", **data: object) -> dict[str, object]:
    body = notification(template=template, data=data)
    for written in ("subject", "text"):
        body.pop(written)
    return body


# The files


def test_a_library_reads_each_folder_with_its_variables_and_parts(tmp_path: Path) -> None:
    write_template(tmp_path, "greeting")
    write_template(tmp_path, "text-only", html=None, text="{{ code }} is your code\n")
    (tmp_path / ".git").mkdir()  # hidden folders are not templates

    library = TemplateLibrary.load(tmp_path)

    assert library.names() == ["greeting", "text-only"]
    greeting, text_only = library.get("greeting"), library.get("text-only")
    assert greeting is not None
    assert text_only is not None
    assert greeting.variables == ("name", "product")
    assert (greeting.parts, text_only.parts) == (["text", "html"], ["text"])
    assert text_only.variables == ("code", "name")


def test_a_missing_directory_holds_no_templates(tmp_path: Path) -> None:
    library = TemplateLibrary.load(tmp_path / "nowhere")

    assert library.names() == []
    with pytest.raises(TemplateError, match="holds no templates") as caught:
        library.render("welcome", {})
    assert caught.value.code == "unknown_template"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"subject": "Hi {{ name }"}, r"subject\.txt, line 1: unexpected '}'"),
        ({"html": "<p>\n{% if x %}\n</p>"}, r"body\.html, line 2: Unexpected end.*'endif'"),
        ({"text": None, "html": None}, "needs body.txt, body.html, or both"),
    ],
    ids=["syntax", "unclosed-block", "no-body"],
)
def test_an_invalid_template_is_refused_naming_the_file_and_line(
    tmp_path: Path, files: dict[str, str | None], message: str
) -> None:
    write_template(tmp_path, "broken", **files)  # type: ignore[arg-type]

    with pytest.raises(ConfigError, match=message):
        TemplateLibrary.load(tmp_path)


def test_a_folder_without_a_subject_or_with_a_bad_name_is_refused(tmp_path: Path) -> None:
    (write_template(tmp_path, "nosubject") / "subject.txt").unlink()
    with pytest.raises(ConfigError, match=r"nosubject/subject\.txt is missing"):
        TemplateLibrary.load(tmp_path)
    (tmp_path / "nosubject").rename(tmp_path / "Bad Name")
    with pytest.raises(ConfigError, match="a template's name is"):
        TemplateLibrary.load(tmp_path)


# Rendering and the sandbox


def test_html_is_escaped_and_text_and_subject_are_not(tmp_path: Path) -> None:
    write_template(tmp_path, "greeting")
    library = TemplateLibrary.load(tmp_path)

    rendered = library.render("greeting", {"name": "<b>Ada & co</b>", "product": "Acme"})

    assert rendered.subject == "Hello <b>Ada & co</b>"
    assert rendered.text == "Hi <b>Ada & co</b>, welcome to Acme.\n"
    assert rendered.html == "<p>Hi &lt;b&gt;Ada &amp; co&lt;/b&gt;</p>\n"


def test_a_missing_variable_is_named(tmp_path: Path) -> None:
    write_template(tmp_path, "greeting")
    library = TemplateLibrary.load(tmp_path)

    with pytest.raises(TemplateError, match="'product' is undefined") as caught:
        library.render("greeting", {"name": "Ada"})
    assert caught.value.code == "template_data_missing"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ name.__init__.__globals__ }}",
        "{% include '/etc/passwd' %}",
        "{% for i in range(10**9) %}{% endfor %}",
    ],
    ids=["python-internals", "globals", "read-a-file", "huge-range"],
)
def test_the_sandbox_refuses_what_a_template_must_not_do(tmp_path: Path, source: str) -> None:
    write_template(tmp_path, "evil", text=source)
    library = TemplateLibrary.load(tmp_path)

    with pytest.raises(TemplateError) as caught:
        library.render("evil", {"name": "Ada"})
    assert caught.value.code == "template_render_failed"


def test_environment_and_settings_are_not_in_reach(tmp_path: Path) -> None:
    write_template(tmp_path, "nosy", text="{{ os.environ }}{{ settings }}")
    library = TemplateLibrary.load(tmp_path)

    with pytest.raises(TemplateError, match="'os' is undefined"):
        library.render("nosy", {"name": "Ada"})


def test_the_shipped_example_renders_with_the_readmes_data() -> None:
    library = TemplateLibrary.load(REPO / "config" / "templates")

    rendered = library.render("welcome", WELCOME_DATA)

    assert rendered.subject == "Welcome to Acme, Ada"
    assert "https://acme.example/login" in (rendered.text or "")
    assert 'href="https://acme.example/login"' in (rendered.html or "")
    readme = (REPO / "README.md").read_text()
    assert '"template":"welcome"' in readme.replace(" ", "")


# Through the API

#: What a notification from a template is, stored and sent, the same on both stores.
ON_BOTH_STORES = pytest.mark.parametrize("database_url", STORES, indirect=True)


@pytest.fixture
def templates_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "templates"
    write_template(directory, "greeting")
    return directory


@ON_BOTH_STORES
async def test_a_notification_from_a_template_sends_what_it_rendered(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler, templates_dir: Path
) -> None:
    async with running_app(make_settings(template_dir=templates_dir)) as client:
        response = await client.post(
            "/v1/notifications", json=templated(name="Ada", product="Acme")
        )
        assert response.status_code == 202, response.text
        doc = await wait_for(client, response.json()["id"])

    assert (doc["status"], doc["template"], doc["subject"]) == ("sent", "greeting", "Hello Ada")
    (received,) = smtp_handler.received
    message = received.message
    assert message["Subject"] == "Hello Ada"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None
    assert html is not None
    assert text.get_content().splitlines() == ["Hi Ada, welcome to Acme."]
    assert html.get_content().splitlines() == ["<p>Hi Ada</p>"]


@ON_BOTH_STORES
async def test_every_retry_sends_the_bytes_accepted_even_after_the_template_changed(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler, templates_dir: Path
) -> None:
    # The relay keeps the first copy and drops the connection: the retry sends again.
    smtp_handler.data_replies.append(DROP_AFTER_ACCEPT)
    settings = make_settings(
        template_dir=templates_dir, retry_initial_delay=0.5, retry_max_delay=1.0
    )
    runner = running_app(settings)
    async with runner as client:
        response = await client.post(
            "/v1/notifications", json=templated(name="Ada", product="Acme")
        )
        assert response.status_code == 202, response.text
        notification_id = response.json()["id"]
        await wait_for(client, notification_id, lambda doc: len(doc["attempts"]) == 1)
        write_template(templates_dir, "greeting", subject="Changed {{ name }}", text="New\n")
        runner.app.state.services.templates.reload()
        doc = await wait_for(client, notification_id)

    assert [a["outcome"] for a in doc["attempts"]] == ["deferred", "sent"]
    first, second = smtp_handler.received
    assert second.data == first.data
    assert first.message["Subject"] == "Hello Ada"


@pytest.mark.parametrize(
    ("body", "status", "code", "named"),
    [
        (templated("nope", name="Ada"), 422, "unknown_template", "'nope'"),
        (templated(name="Ada"), 422, "template_data_missing", "'product' is undefined"),
        (templated(name="Ada\r\nBcc: x@evil.example", product="Acme"), 422,
         "template_render_failed", "unusable subject"),
        ({**templated(name="Ada", product="Acme"), "subject": "Hi"}, 422, "invalid_request",
         "give `template` or `subject`, not both"),
        ({**notification(), "data": {"name": "Ada"}}, 422, "invalid_request",
         "`data` is only for a `template`"),
    ],
    ids=["unknown", "missing-variable", "header-injection", "with-subject", "data-alone"],
)  # fmt: skip
async def test_a_template_that_cannot_give_a_message_is_refused_and_nothing_stored(
    make_settings: MakeSettings,
    templates_dir: Path,
    body: dict[str, object],
    status: int,
    code: str,
    named: str,
) -> None:
    async with running_app(make_settings(template_dir=templates_dir)) as client:
        response = await client.post("/v1/notifications", json=body)
        listed = await client.get("/v1/notifications")

    assert (response.status_code, response.json()["code"]) == (status, code), response.text
    assert named in response.text
    assert listed.json()["items"] == []


@pytest.mark.parametrize(
    "name", ["../templates/greeting", "greeting/../greeting", "/etc/passwd", "..", "GREETING"]
)
async def test_a_template_name_is_a_name_not_a_path(
    make_settings: MakeSettings, templates_dir: Path, name: str
) -> None:
    # Names are looked up among the folders read at start-up, never opened as paths.
    (templates_dir.parent / "secret.txt").write_text("not a template")
    async with running_app(make_settings(template_dir=templates_dir)) as client:
        posted = await client.post(
            "/v1/notifications", json={"to": ["ada@example.com"], "template": name, "data": {}}
        )
        previewed = await client.post(f"/v1/templates/{name}/preview", json={"data": {}})
        listed = await client.get("/v1/notifications")

    assert (posted.status_code, posted.json()["code"]) == (422, "unknown_template")
    # Unknown, a path no route serves, or (the client resolving "..") greeting itself.
    assert previewed.status_code in (404, 405, 422)
    assert "not a template" not in posted.text + previewed.text
    assert listed.json()["items"] == []


@ON_BOTH_STORES
async def test_a_keyed_templated_request_replays_the_original(
    make_settings: MakeSettings, templates_dir: Path
) -> None:
    body = templated(name="Ada", product="Acme")
    headers = {"Idempotency-Key": "tpl-1"}
    async with running_app(make_settings(template_dir=templates_dir)) as client:
        first = await client.post("/v1/notifications", json=body, headers=headers)
        again = await client.post("/v1/notifications", json=body, headers=headers)
        other = await client.post(
            "/v1/notifications", json=templated(name="Bob", product="Acme"), headers=headers
        )

    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["id"] == first.json()["id"]
    assert (other.status_code, other.json()["code"]) == (422, "idempotency_key_reused")


async def test_templates_are_listed_and_previewed_without_storing_anything(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler, templates_dir: Path
) -> None:
    write_template(templates_dir, "code", text="Your code: {{ code }}\n", html=None)
    async with running_app(make_settings(template_dir=templates_dir)) as client:
        listed = await client.get("/v1/templates")
        preview = await client.post(
            "/v1/templates/greeting/preview", json={"data": {"name": "<Ada>", "product": "Acme"}}
        )
        unknown = await client.post("/v1/templates/nope/preview", json={"data": {}})
        missing = await client.post("/v1/templates/code/preview", json={"data": {"name": "A"}})
        stored = await client.get("/v1/notifications")

    assert listed.json() == {
        "items": [
            {"name": "code", "variables": ["code", "name"], "parts": ["text"]},
            {"name": "greeting", "variables": ["name", "product"], "parts": ["text", "html"]},
        ]
    }
    assert preview.status_code == 200, preview.text
    assert preview.json() == {
        "template": "greeting",
        "subject": "Hello <Ada>",
        "text": "Hi <Ada>, welcome to Acme.\n",
        "html": "<p>Hi &lt;Ada&gt;</p>\n",
    }
    assert (unknown.status_code, unknown.json()["code"]) == (404, "unknown_template")
    assert (missing.status_code, missing.json()["code"]) == (422, "template_data_missing")
    assert stored.json()["items"] == []
    assert smtp_handler.received == []


# The real process: start-up checks and SIGHUP


def test_check_config_names_the_invalid_template_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_template(tmp_path / "templates", "broken", html="<p>\n{{ name }\n</p>")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NOTIFIER_TEMPLATE_DIR", str(tmp_path / "templates"))

    code = main(["check-config", "--dev"])

    assert code == 2
    assert "broken/body.html, line 2: unexpected '}'" in capsys.readouterr().err


@pytest.mark.slow
def test_sighup_reads_the_templates_again_and_keeps_them_if_the_new_ones_are_invalid(
    service_env: dict[str, str], tmp_path: Path, processes: list[ServiceProcess]
) -> None:
    directory = tmp_path / "templates"
    write_template(directory, "greeting")
    env = {**service_env, "NOTIFIER_TEMPLATE_DIR": str(directory)}
    service = spawn(processes, env, tmp_path)
    assert service.process is not None

    def subject() -> str:
        response = httpx.post(
            f"{service.url}/v1/templates/greeting/preview",
            json={"data": {"name": "Ada", "product": "Acme"}},
        )
        assert response.status_code == 200, response.text
        text: str = response.json()["subject"]
        return text

    def until_subject(expected: str) -> None:
        give_up = time.monotonic() + DEADLINE_SECONDS
        while (seen := subject()) != expected:
            assert time.monotonic() < give_up, f"still {seen!r}"
            time.sleep(0.02)

    assert subject() == "Hello Ada"
    sent = service.run_cli(
        "send", "--to", "ada@example.com", "--template", "greeting",
        "--data", '{"name": "Ada", "product": "Acme"}',
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    doc = httpx.get(f"{service.url}/v1/notifications/{json.loads(sent.stdout)['id']}").json()
    assert (doc["template"], doc["subject"]) == ("greeting", "Hello Ada")
    bad = service.run_cli(
        "send", "--to", "ada@example.com", "--template", "greeting", "--data", "["
    )
    assert bad.returncode == 2
    assert "--data: not JSON" in bad.stderr
    write_template(directory, "greeting", subject="Welcome, {{ name }}")
    service.process.send_signal(signal.SIGHUP)
    until_subject("Welcome, Ada")
    # A half-edited file: the service keeps what it had, and goes on serving.
    write_template(directory, "greeting", subject="Welcome, {{ name ")
    write_template(directory, "farewell", subject="Bye")
    service.process.send_signal(signal.SIGHUP)
    until_bad = time.monotonic() + DEADLINE_SECONDS
    while "templates not reloaded" not in service.log.read_text():
        assert time.monotonic() < until_bad, service.log.read_text()
        time.sleep(0.02)
    assert subject() == "Welcome, Ada"
    assert [t["name"] for t in httpx.get(f"{service.url}/v1/templates").json()["items"]] == [
        "greeting"
    ]
    assert service.process.poll() is None
