"""push_to_hub and loading by Hub id, with no network: a local in-process Hub server and a Hub cache folder."""
from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from smashlib import SmashConfig, SmashedModel, SmashedModelLoadError, smash
from smashlib.hub import model_card
from smashlib.serialization import read_manifest
from tests.tiny_models import build_tiny, tiny_inputs, tiny_tokenizer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub(BaseHTTPRequestHandler):
    """The part of the Hub's HTTP API that ``HfApi.create_repo`` and ``upload_folder`` use. Every file
    is asked for as a "regular" upload, so its bytes arrive inside the commit, where the test reads them."""

    requests: ClassVar[list[tuple[str, str, dict]]] = []
    repos: ClassVar[dict[str, dict]] = {}

    def log_message(self, *args):  # keep pytest's output clean
        pass

    def _reply(self, payload: dict, status: int = 200) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        endpoint = f"http://{self.server.server_address[0]}:{self.server.server_address[1]}"
        FakeHub.requests.append((self.path, self.headers.get("authorization", ""), {}))
        if self.path == "/api/repos/create":
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}"
            FakeHub.repos.setdefault(repo_id, {"visibility": payload.get("visibility"), "files": {}, "commits": []})
            return self._reply({"url": f"{endpoint}/{repo_id}", "name": repo_id, "id": repo_id})
        if self.path == "/api/validate-yaml":
            return self._reply({"errors": [], "warnings": []})
        parts = self.path.split("?")[0].split("/")  # /api/models/<org>/<name>/<action>/<revision>
        repo_id, action = f"{parts[3]}/{parts[4]}", parts[5]
        if repo_id not in FakeHub.repos:
            return self._reply({"error": "Repository not found"}, status=404)
        if action == "preupload":
            files = json.loads(body)["files"]
            return self._reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        if action == "commit":
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            repo = FakeHub.repos[repo_id]
            for line in lines:
                if line["key"] == "header":
                    repo["commits"].append(line["value"]["summary"])
                elif line["key"] == "file":
                    repo["files"][line["value"]["path"]] = base64.b64decode(line["value"]["content"])
            return self._reply({"commitUrl": f"{endpoint}/{repo_id}/commit/{COMMIT}", "commitOid": COMMIT})
        return self._reply({"error": f"not faked: {self.path}"}, status=404)


@pytest.fixture
def fake_hub(monkeypatch):
    """huggingface_hub pointed at a local server, with offline mode lifted for it alone."""
    from huggingface_hub import constants

    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeHub.requests, FakeHub.repos = [], {}
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield FakeHub
    server.shutdown()
    server.server_close()


def hub_cache_layout(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """Files laid out as huggingface_hub's cache lays out a downloaded snapshot (blobs, refs, snapshots)."""
    import hashlib

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(Path("../..") / "blobs" / blob.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read once, at import
    return cache


def smashed_llama(**extra) -> SmashedModel:
    config = SmashConfig({"quantizer": "torch_dynamic", **extra}, device="cpu")
    config.add_tokenizer(tiny_tokenizer())
    return smash(build_tiny("llama"), config, verbose=False)


def test_push_uploads_the_saved_folder_and_a_model_card_then_loads_by_repo_id(fake_hub, hub_cache, tmp_path, monkeypatch):
    smashed = smashed_llama()
    url = smashed.push_to_hub("me/tiny-smashed", private=True, token="hf_secret", commit_message="first smash")

    assert url.endswith(f"/me/tiny-smashed/commit/{COMMIT}")
    repo = fake_hub.repos["me/tiny-smashed"]
    assert repo["visibility"] == "private" and repo["commits"] == ["first smash"]
    assert all(auth == "Bearer hf_secret" for _, auth, _ in fake_hub.requests)
    smashed.save_pretrained(tmp_path / "local")
    local = {p.name for p in (tmp_path / "local").iterdir()}
    assert set(repo["files"]) == local | {"README.md"}
    assert repo["files"]["model.safetensors"] == (tmp_path / "local" / "model.safetensors").read_bytes()

    card = repo["files"]["README.md"].decode()
    assert "torch_dynamic" in card and "target_modules" in card
    assert "from smashlib import SmashedModel" in card and 'SmashedModel.from_pretrained("me/tiny-smashed")' in card
    assert "smashlib 0" in card or "smashlib" in card.split("---")[1]

    # what was uploaded, as the Hub cache holds it after a download, loads by repo id (offline)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    hub_cache_layout(hub_cache, "me/tiny-smashed", repo["files"])
    loaded = SmashedModel.from_pretrained("me/tiny-smashed")
    with torch.no_grad():
        assert torch.equal(loaded(**tiny_inputs("llama")).logits, smashed(**tiny_inputs("llama")).logits)
    assert loaded.smash_config.components.tokenizer is not None


def test_default_commit_message_names_smashlib(fake_hub):
    smashed_llama().push_to_hub("me/other")
    assert fake_hub.repos["me/other"]["commits"][0].startswith("Upload model smashed with smashlib")
    assert fake_hub.repos["me/other"]["visibility"] == "public"


def test_model_card_carries_the_report_figures(tmp_path):
    from smashlib import Report
    from smashlib.evaluation.metrics.base import Quantity

    smashed = smashed_llama()
    quantity = Quantity(key="latency_p50_ms", label="latency p50", unit="ms", lower_is_better=True)
    smashed.report = Report(models=["base", "smashed"], quantities=[quantity],
                            values={"base": {"latency_p50_ms": 12.0}, "smashed": {"latency_p50_ms": 4.0}})
    assert "report" not in vars(smashed.model)  # kept on the SmashedModel, not pushed into the torch module
    folder = smashed.save_pretrained(tmp_path / "saved")
    # kept as JSON in smash_config.json; the card is rendered from it at push time
    assert read_manifest(folder)["saved_model"]["report"]["json"]["values"]["smashed"] == {"latency_p50_ms": 4.0}
    card = model_card(read_manifest(folder), "me/x")
    assert "## Measured" in card and "latency p50" in card and "12" in card and "4" in card

    # the figures are saved with the model, so a card made after reloading still has them
    reloaded = SmashedModel.from_pretrained(folder)
    assert reloaded.report is None
    again = reloaded.save_pretrained(tmp_path / "again")
    assert "## Measured" not in model_card(read_manifest(again), "me/x")  # no report attached: none claimed
    assert model_card(read_manifest(folder), "me/x") == card

    class JsonOnly:  # any report offering to_json is kept as its JSON
        def to_json(self):
            return json.dumps({"perplexity": {"base": 10.0, "smashed": 10.4}})

    smashed.report = JsonOnly()
    folder = smashed.save_pretrained(tmp_path / "saved")
    assert '"perplexity"' in model_card(read_manifest(folder), "me/x")


def test_repo_id_resolved_from_the_hub_cache_offline(hub_cache, tmp_path):
    smashed = smashed_llama()
    folder = smashed.save_pretrained(tmp_path / "saved")
    hub_cache_layout(hub_cache, "org/model", {p.name: p.read_bytes() for p in folder.iterdir()})
    loaded = SmashedModel.from_pretrained("org/model")
    with torch.no_grad():
        assert torch.equal(loaded(**tiny_inputs("llama")).logits, smashed(**tiny_inputs("llama")).logits)


def test_repo_id_not_in_the_cache_while_offline(hub_cache):
    with pytest.raises(SmashedModelLoadError, match="not .*in the Hub cache.*HF_HUB_OFFLINE"):
        SmashedModel.from_pretrained("org/never-downloaded")


def test_path_that_is_neither_a_folder_nor_a_repo_id(tmp_path):
    with pytest.raises(SmashedModelLoadError, match="not a Hub repo id"):
        SmashedModel.from_pretrained(tmp_path / "a" / "b" / "c")
