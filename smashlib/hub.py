"""The Hugging Face Hub side of saving: push a saved folder with a model card rendered from its manifest.

Uploads push exactly the folder ``save_pretrained`` writes, plus a README.md model card generated at
push time from that folder's smash_config.json (the evaluation report is kept there as JSON). Finding a
saved model by repo id is part of loading (:func:`smashlib.serialization.resolve_folder`). This module
imports neither the model nor the serialization code: it is handed something that can save itself.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any, Protocol

from smashlib.errors import SmashError
from smashlib.manifest import read_manifest


class Saveable(Protocol):
    def save_pretrained(self, save_directory: Any) -> Path: ...


# ====================================================================== model card
def report_markdown(record: dict[str, Any] | None) -> str | None:
    """The measured figures of a report as smash_config.json keeps it ({"json": ...} or {"markdown": ...})."""
    if not record:
        return None
    if "markdown" in record:
        return record["markdown"]
    payload = record.get("json")
    if payload is None:
        return None
    from smashlib.evaluation.report import Report

    try:
        return Report.from_dict(payload).to_markdown()
    except Exception:  # noqa: BLE001 - a report of another shape (or schema) is shown as the JSON it is
        import json

        return f"```json\n{json.dumps(payload, indent=2, default=str)}\n```"


def _human_bytes(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} B"


def model_card(manifest: dict[str, Any], repo_id: str) -> str:
    """README.md for the Hub, from a saved folder's manifest: how the model was smashed, with what, measured
    figures, how to load it."""
    from smashlib import registry

    saved = manifest["saved_model"]
    versions = saved.get("versions", {})
    base = saved["model"].get("source") or ""
    base_is_hub_id = bool(re.match(r"^[\w.-]+/[\w.-]+$", base)) and not Path(base).exists()
    # library_name is smashlib, not transformers: the Hub's "use this model" snippet for transformers
    # would load compressed tensors into a plain model
    tags = ["smashlib", *(a["name"] for a in saved["algorithms"])]
    if saved["model"]["library"] == "transformers":
        tags.append("transformers")
    front = ["---", "library_name: smashlib", "tags:", *(f"- {tag}" for tag in tags)]
    if base_is_hub_id:
        front.append(f"base_model: {base}")
    front.append("---")
    lines = front + [
        "",
        f"# {repo_id.split('/')[-1]}",
        "",
        (
            f"A {saved['model']['class']}{f' ({base})' if base else ''} smashed with "
            f"[smashlib](https://pypi.org/project/smashlib/) {versions.get('smashlib', '?')}."
        ),
        "",
        "## How it was smashed",
        "",
        "| step | group | algorithm | hyperparameters | at load time |",
        "|---|---|---|---|---|",
    ]
    for step, entry in enumerate(saved["algorithms"], start=1):
        settings = ", ".join(f"`{k}={v!r}`" for k, v in entry["settings"].items()) or "-"
        lines.append(f"| {step} | {entry['group']} | `{entry['name']}` | {settings} | {entry['restored']} |")
    if not saved["algorithms"]:
        lines.append("| - | - | none | - | - |")
    calibration = manifest.get("components", {})
    if calibration:
        lines += ["", "Components used: " + "; ".join(f"{k}: {v}" for k, v in calibration.items()) + "."]
    lines += [
        "",
        (
            f"Weights on disk: {_human_bytes(saved['weights']['bytes'])} in `{saved['weights']['file']}` "
            "(compressed tensors are stored as they are)."
        ),
        "",
        "Saved with " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
    ]
    measured = report_markdown(saved.get("report"))
    if measured:
        lines += ["", "## Measured", "", measured]
    packages = sorted(
        {p for a in saved["algorithms"] for p in registry.get_algorithm(a["name"]).needs_packages}
        if all(a["name"] in registry.algorithms() for a in saved["algorithms"]) else set()
    )
    install = "pip install smashlib" + (" " + " ".join(f"'{p}'" for p in packages) if packages else "")
    lines += [
        "",
        "## Load it",
        "",
        f"`{install}`, then:",
        "",
        "```python",
        "from smashlib import SmashedModel",
        f'model = SmashedModel.from_pretrained("{repo_id}")',
        "```",
        "",
        "Loading restores the smashed weights as saved: no calibration data, no quantization or pruning redone"
        + (
            f"; {', '.join(a['name'] for a in saved['algorithms'] if a['restored'] != 'from the weights')} "
            "is applied again, as it lives only in the running process."
            if any(a["restored"] != "from the weights" for a in saved["algorithms"]) else "."
        ),
        "",
    ]
    return "\n".join(lines)


# ====================================================================== push
def push_to_hub(
    smashed: Saveable,
    repo_id: str,
    private: bool = False,
    token: str | bool | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
) -> str:
    """Save ``smashed`` to a temporary folder, add a model card, upload it; returns the commit URL.

    The repository is created if needed (``private`` applies then; an existing repository keeps its
    visibility). Files of earlier uploads that this save does not write are left in the repository.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled
    from huggingface_hub.utils import validate_repo_id

    from smashlib import __version__

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise SmashError(f"cannot push to '{repo_id}': not a Hub repo id ({error}). Use 'owner/name'.") from None
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="smashlib-push-") as scratch:
        folder = smashed.save_pretrained(Path(scratch) / "model")
        (folder / "README.md").write_text(model_card(read_manifest(folder), repo_id), encoding="utf-8")
        try:
            repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            commit = api.upload_folder(
                repo_id=repo.repo_id,
                folder_path=folder,
                repo_type="model",
                revision=revision,
                commit_message=commit_message or f"Upload model smashed with smashlib {__version__}",
            )
        except OfflineModeIsEnabled:
            raise SmashError(
                f"cannot push to '{repo_id}': the Hub is switched off (HF_HUB_OFFLINE=1). Unset HF_HUB_OFFLINE, or "
                "save_pretrained to a folder and upload it later."
            ) from None
        except HfHubHTTPError as error:
            raise SmashError(f"pushing to '{repo_id}' failed: {str(error).splitlines()[0]}") from None
        except OSError as error:  # no network: requests' and httpx's connection errors
            raise SmashError(f"cannot push to '{repo_id}': the Hub cannot be reached ({error}).") from None
    return str(getattr(commit, "commit_url", commit))
