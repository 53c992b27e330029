"""Who gets in and what the page may read: only files under --outputs and the app's own assets, with
every way out of the folder refused (``..``, absolute paths, symlinks, encoded variants), passwords
when the app listens beyond this machine, and state changes only from the app's own page."""
import base64
import http.client
import os
from urllib.parse import urlparse

import pytest

from threestudio_lucid.app import access, cli

from .conftest import call

SECRET = "the-secret-contents-42"


@pytest.fixture
def tree(tmp_path):
    """outputs/ with a run's image, a dot-file and links that lead out; a secret file beside it."""
    outputs = tmp_path / "outputs"
    save = outputs / "lucid-sds-toy" / "a_penguin@20261207-000000" / "save"
    save.mkdir(parents=True)
    (save / "it5-0.png").write_bytes(b"\x89PNG fine")
    (outputs / ".hidden").write_text(SECRET)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    (tmp_path / "secret.txt").write_text(SECRET)
    os.symlink(outside / "secret.txt", save / "link.txt")
    os.symlink(outside, save / "out")
    os.symlink(save / "it5-0.png", save / "inside-link.png")  # a link that stays inside is fine
    return outputs


REFUSED = [
    "", "/", "../secret.txt", "lucid-sds-toy/../../secret.txt", "lucid-sds-toy/a_penguin@20261207-000000/save/../../../../secret.txt",
    "/etc/passwd", "{secret}", "lucid-sds-toy/a_penguin@20261207-000000/save/link.txt",
    "lucid-sds-toy/a_penguin@20261207-000000/save/out/secret.txt", "lucid-sds-toy\\..\\..\\secret.txt",
    "lucid-sds-toy/./a_penguin@20261207-000000/save/it5-0.png", "lucid-sds-toy//a_penguin@20261207-000000/save/it5-0.png",
    ".hidden", "lucid-sds-toy/a_penguin@20261207-000000/save/it5-0.png\x00.txt", "lucid-sds-toy",
    "%2e%2e/secret.txt",
]


def test_resolve_under_names_files_inside_the_folder_only(tree):
    good = "lucid-sds-toy/a_penguin@20261207-000000/save/it5-0.png"
    assert access.resolve_under(str(tree), good) == os.path.realpath(tree / good)
    assert access.resolve_under(str(tree), "lucid-sds-toy/a_penguin@20261207-000000/save/inside-link.png")
    secret = str(tree.parent / "elsewhere" / "secret.txt")
    for requested in REFUSED:
        assert access.resolve_under(str(tree), requested.format(secret=secret)) is None, requested
    assert access.resolve_folder_under(str(tree), "lucid-sds-toy/a_penguin@20261207-000000")
    assert access.resolve_folder_under(str(tree), "lucid-sds-toy/a_penguin@20261207-000000/save/out") is None
    assert access.resolve_folder_under(str(tree), "..") is None


def raw_get(url, path, headers=None):
    """GET ``path`` exactly as written (no client-side normalisation of ``..`` or ``%2e``)."""
    parts = urlparse(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    connection.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
    connection.putheader("Host", (headers or {}).pop("Host", parts.netloc))
    for key, value in (headers or {}).items():
        connection.putheader(key, value)
    connection.endheaders()
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, body, response


def test_the_server_serves_outputs_and_its_assets_and_refuses_every_path_out(tree, serve_app):
    url = serve_app(outputs=str(tree))
    status, body, response = raw_get(url, "/files/lucid-sds-toy/a_penguin%4020261207-000000/save/it5-0.png")
    assert status == 200 and body == b"\x89PNG fine"
    assert response.getheader("Content-Security-Policy") == "sandbox"  # nothing under outputs runs as the app
    status, body, response = raw_get(url, "/files/lucid-sds-toy/a_penguin@20261207-000000/save/it5-0.png?download=1")
    assert status == 200 and "attachment" in response.getheader("Content-Disposition")
    assert raw_get(url, "/static/viewer.js")[0] == 200 and raw_get(url, "/")[0] == 200
    attacks = [
        "/files/../secret.txt", "/files/../../secret.txt", "/files/%2e%2e/secret.txt", "/files/%2E%2E/%2E%2E/secret.txt",
        "/files/..%2fsecret.txt", "/files/..%2F..%2Fsecret.txt", "/files/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/files/%252e%252e%252fsecret.txt", "/files//etc/passwd", "/files/%2Fetc%2Fpasswd", "/files/%2fetc/passwd",
        f"/files/{tree.parent}/secret.txt", "/files/..%5c..%5csecret.txt", "/files/%5c..%5csecret.txt",
        "/files/lucid-sds-toy/a_penguin@20261207-000000/save/link.txt",
        "/files/lucid-sds-toy/a_penguin@20261207-000000/save/out/secret.txt",
        "/files/lucid-sds-toy/a_penguin@20261207-000000/save/%2e%2e/%2e%2e/%2e%2e/%2e%2e/secret.txt",
        "/files/.hidden", "/files/%2ehidden", "/files/.lucid-app/runs.json", "/files/lucid-sds-toy/a_penguin@20261207-000000/save/it5-0.png%00.txt",
        "/static/../app/server.py", "/static/..%2fserver.py", "/static/%2e%2e/server.py", "/static/%2e%2e%2fcli.py",
        "/static/..%2f..%2fapp%2fserver.py", "/files/..;/secret.txt", "/..%2f..%2fsecret.txt", "/%2e%2e/secret.txt",
        "/api/run?key=d:../elsewhere", "/api/run?key=d:%2e%2e", "/api/run?key=d:/etc", "/api/run/live.ply?key=d:..",
    ]
    for path in attacks:
        status, body, _ = raw_get(url, path)
        assert status in (400, 403, 404), (path, status)
        assert SECRET.encode() not in body and b"def resolve_under" not in body and b"import" not in body, path


def test_credentials_are_required_when_given_and_checked(tree, serve_app):
    url = serve_app(outputs=str(tree), credentials=access.Credentials("ann", "s3cret:x"))
    good = "Basic " + base64.b64encode(b"ann:s3cret:x").decode()
    for header in (None, "Basic " + base64.b64encode(b"ann:wrong").decode(), "Basic !!!", "Bearer x"):
        status, _, response = raw_get(url, "/api/info", {"Authorization": header} if header else {})
        assert status == 401 and response.getheader("WWW-Authenticate") == 'Basic realm="lucid-app"'
    status, body, _ = raw_get(url, "/api/info", {"Authorization": good})
    assert status == 200 and b'"user": "ann"' in body
    assert raw_get(url, "/files/../secret.txt", {"Authorization": good})[0] == 404


def test_without_credentials_only_local_names_and_the_apps_own_page_are_answered(tree, serve_app):
    url = serve_app(outputs=str(tree))
    port = urlparse(url).port
    # a page whose domain resolves to 127.0.0.1 (DNS rebinding) sends its own Host
    assert raw_get(url, "/api/info", {"Host": f"evil.example:{port}"})[0] == 421
    assert raw_get(url, "/api/info", {"Host": f"localhost:{port}"})[0] == 200
    body = {"prompt": "a penguin", "config_id": "lucid/lucid-sds-toy", "fields": {}}
    status, answer = call(url, "/api/runs", body, {"Origin": "http://evil.example"})
    assert status == 403 and answer["error"].startswith("error: ")
    status, answer = call(url, "/api/runs", body, {"Referer": "http://evil.example/page"})
    assert status == 403
    status, answer = call(url, "/api/runs", body, {"Content-Type": "text/plain"})
    assert status == 415
    assert call(url, "/api/runs")[1]["runs"] == []  # none of these queued anything


def test_lucid_app_binds_beyond_loopback_only_with_credentials(tmp_path, capsys):
    assert cli.main(["--host", "0.0.0.0", "--outputs", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: --host 0.0.0.0 serves the app to other machines: give --auth USER:PASS or --auth-file FILE "
                   "(or leave --host at 127.0.0.1)")
    (tmp_path / "auth").write_text("nocolon\n")
    assert cli.main(["--host", "0.0.0.0", "--auth-file", str(tmp_path / "auth"), "--outputs", str(tmp_path / "o")]) == 2
    assert "must be USER:PASS" in capsys.readouterr().err
    assert cli.main(["--auth", "a:b", "--auth-file", str(tmp_path / "auth")]) == 2
    assert capsys.readouterr().err.strip() == "error: give --auth or --auth-file, not both"
    (tmp_path / "auth").write_text("ann:pw\n")
    args = cli.build_parser().parse_args(["--host", "0.0.0.0", "--auth-file", str(tmp_path / "auth"),
                                          "--outputs", str(tmp_path / "o"), "--devices", "cpu"])
    settings = cli.settings_from(args)
    assert settings.credentials == access.Credentials("ann", "pw") and settings.devices == ["cpu"]
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert access.exposure_error(host, None) is None
    for host in ("0.0.0.0", "::", "192.168.1.5", "myhost"):
        assert access.exposure_error(host, None)


def test_a_second_app_on_the_same_outputs_is_refused_in_one_line(tmp_path, serve_app):
    serve_app()
    with pytest.raises(Exception) as info:
        serve_app()
    assert "another lucid-app (pid " in str(info.value) and "serves --outputs" in str(info.value)


def test_a_runs_mesh_view_and_downloads_name_only_files_under_outputs(tmp_path, serve_app):
    """threestudio's OBJ export: its MTL and texture are named to the page only when /files/ serves them;
    an export folder that is a link out of --outputs is not shown at all."""
    outputs, outside = tmp_path / "outputs", tmp_path / "elsewhere"
    run = outputs / "dreamfusion-sd" / "a_cat@20261207-000000"
    (run / "save").mkdir(parents=True)
    (run / "cmd.txt").write_text("python launch.py --config configs/dreamfusion-sd.yaml --export\n")
    outside.mkdir()
    (outside / "secret.jpg").write_text(SECRET)
    for folder in (run / "save" / "it5-export", outside / "it9-export"):
        folder.mkdir()
        (folder / "model.obj").write_text("mtllib model.mtl\nusemtl default\nv 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nf 1/1/ 2/1/ 3/1/\n")
        (folder / "model.mtl").write_text("newmtl default\nmap_Kd texture_kd.jpg\n")
    os.symlink(outside / "secret.jpg", run / "save" / "it5-export" / "texture_kd.jpg")
    os.symlink(outside / "it9-export", run / "save" / "it9-export")
    url = serve_app(outputs=str(outputs))
    status, detail = call(url, "/api/run?key=d:dreamfusion-sd/a_cat%4020261207-000000")
    assert status == 200, detail
    (export,) = detail["exports"]  # it9-export leads out: not listed
    view = export["view"]
    assert export["step"] == 5 and set(export["files"]) == {"obj", "mtl"}
    assert (view["kind"], view["name"], view["texture"], view["texture_name"]) == ("obj", "model.obj", None, None)
    for link in (view["url"], view["mtl"], export["files"]["obj"], export["files"]["mtl"]):
        assert link.startswith("/files/dreamfusion-sd/a_cat%4020261207-000000/save/it5-export/model.")
        status, body, _ = raw_get(url, link)
        assert status == 200 and SECRET.encode() not in body
