"""The Hugging Face Hub side of saving: find a saved model by repo id, push one with a model card.

Downloads go through ``huggingface_hub.snapshot_download``, so its cache, ``HF_HUB_CACHE``,
``HF_HUB_OFFLINE`` and tokens work as everywhere else; uploads push exactly the folder
``save_pretrained`` writes, plus a README.md model card generated from the smash_config.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smashlib.errors import SmashedModelLoadError

if TYPE_CHECKING:
    from smashlib.model import SmashedModel

_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$|^[\w.-]+$")


def resolve_folder(path_or_repo_id: str | os.PathLike, revision: str | None = None, token: str | bool | None = None) -> Path:
    """A local folder for ``path_or_repo_id``: the path itself when it exists, else a Hub snapshot."""
    from smashlib.atomic import readable_folder

    path = Path(path_or_repo_id).expanduser()
    if readable_folder(path).exists():
        if not readable_folder(path).is_dir():
            raise SmashedModelLoadError(f"{path} is a file; give the folder save_pretrained wrote.")
        return path
    name = str(path_or_repo_id)
    if isinstance(path_or_repo_id, os.PathLike) or not _REPO_ID.match(name) or name.startswith((".", "~")):
        raise SmashedModelLoadError(f"no folder at {path}, and '{name}' is not a Hub repo id (owner/name).")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(snapshot_download(name, revision=revision, token=token))
    except GatedRepoError:
        raise SmashedModelLoadError(f"'{name}' is gated on the Hub: accept its terms on the website, then pass token=.") from None
    except RepositoryNotFoundError:
        raise SmashedModelLoadError(
            f"no folder at {path}, and no Hub repository '{name}' (or it is private: pass token=)."
        ) from None
    except RevisionNotFoundError:
        raise SmashedModelLoadError(f"the Hub repository '{name}' has no revision '{revision}'.") from None
    except LocalEntryNotFoundError as error:
        raise SmashedModelLoadError(
            f"no folder at {path}, and '{name}' is not (completely) in the Hub cache while the Hub cannot be reached "
            f"({str(error).splitlines()[0]}). Connect (unset HF_HUB_OFFLINE) or pass a local folder."
        ) from None
    except HfHubHTTPError as error:
        raise SmashedModelLoadError(f"downloading '{name}' from the Hub failed: {error}") from None


# ====================================================================== model card
def report_markdown(report: Any) -> str:
    """The measured figures of an evaluation report, whatever form the report object offers."""
    for method in ("to_markdown", "to_json"):
        render = getattr(report, method, None)
        if callable(render):
            text = str(render())
            return text if method == "to_markdown" else f"```json\n{text}\n```"
    return f"```\n{report}\n```"


def _human_bytes(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} B"


def model_card(smashed: SmashedModel, repo_id: str, manifest: dict[str, Any]) -> str:
    """README.md for the Hub: how the model was smashed, with what, measured figures, how to load it."""
    from smashlib import registry

    saved = manifest["saved_model"]
    versions = saved.get("versions", {})
    base = getattr(getattr(smashed.model, "config", None), "_name_or_path", "") or ""
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
    report = getattr(smashed, "report", None)
    measured = report_markdown(report) if report is not None else saved.get("report", {}).get("markdown")
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
    smashed: SmashedModel,
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

    from smashlib import __version__
    from smashlib.serialization import read_manifest, save_smashed_model

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="smashlib-push-") as scratch:
        folder = save_smashed_model(smashed, Path(scratch) / "model")
        (folder / "README.md").write_text(model_card(smashed, repo_id, read_manifest(folder)), encoding="utf-8")
        repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=repo.repo_id,
            folder_path=folder,
            repo_type="model",
            revision=revision,
            commit_message=commit_message or f"Upload model smashed with smashlib {__version__}",
        )
    return str(getattr(commit, "commit_url", commit))
