"""The `smashlib` command: smash, compare, info, algorithms, metrics, demo.

Every group and hyperparameter of the algorithm registry becomes a flag of `smashlib smash`
(``--quantizer torch_dynamic --torch-dynamic-keep-full-precision none``), generated from the registry
and parsed to the hyperparameter's own type, so a new algorithm is on the command line the day it is
added. Bad arguments and smashlib errors end with one line on stderr and a non-zero exit status
(2: the command line or the config is wrong; 1: the work failed), never a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from smashlib.errors import SmashConfigError, SmashError
from smashlib.export import FORMATS

#: The bundled model, usable wherever a model folder or Hub id is expected.
BUNDLED_ALIASES = ("smollm2",)
#: Defaults of `smashlib compare`: small enough for a 2-core CPU to answer in about a minute.
COMPARE_DATASET = "PydocTopics"
COMPARE_SAMPLES = 8
COMPARE_TOKENS = 128


class CommandError(SmashError):
    """The command line asks for something that cannot be done as written (exit status 2): nothing to do,
    no algorithm chosen, a flag missing, an unknown group."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error: the usage of `smash` lists every algorithm's flags."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# ====================================================================== registry -> flags
def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def value_parser(hyperparameter: Any) -> Callable[[str], Any]:
    """A function turning the text of a flag into the hyperparameter's own type (int, float, bool, None, str)."""
    from smashlib import hyperparameters

    def parse(text: str) -> Any:
        try:
            return hyperparameters.parse_text(hyperparameter, text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = hyperparameters.kind(hyperparameter)  # argparse names the type in its messages
    return parse


def add_registry_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per group (the algorithm to apply) and one per hyperparameter, grouped by algorithm."""
    from smashlib import hyperparameters, registry
    from smashlib.algorithm import GROUP_ORDER

    groups = parser.add_argument_group("algorithms (one per group; 'none' for no algorithm)")
    for group in GROUP_ORDER:
        names = registry.algorithms_in_group(group)
        if not names:
            continue
        groups.add_argument(
            flag_name(group), dest=group, metavar="NAME", default=argparse.SUPPRESS,
            choices=[*names, "none"], help=f"{group}: {', '.join(names)}",
        )
    for algorithm in registry.algorithms().values():
        if not algorithm.hyperparameters:
            continue
        needs = registry.describe_needs(algorithm)
        notes = [f"needs {needs}"] if needs else []
        if algorithm.missing_packages():
            notes.append(f"not installed: {algorithm.install_hint()}")
        note = f" [{'; '.join(notes)}]" if notes else ""
        section = parser.add_argument_group(f"{algorithm.group} {algorithm.name}: {algorithm.summary.rstrip('.')}{note}")
        for hyperparameter in algorithm.hyperparameters:
            key = f"{algorithm.name}_{hyperparameter.name}"
            section.add_argument(
                flag_name(key), dest=key, metavar="VALUE", default=argparse.SUPPRESS,
                type=value_parser(hyperparameter), help=hyperparameters.describe(hyperparameter),
            )


def config_values(args: argparse.Namespace) -> dict[str, Any]:
    """The groups and hyperparameters given on the command line, as SmashConfig keys."""
    from smashlib import registry
    from smashlib.algorithm import GROUP_ORDER

    keys = set(GROUP_ORDER) | {
        f"{a.name}_{hp.name}" for a in registry.algorithms().values() for hp in a.hyperparameters
    }
    values = {key: value for key, value in vars(args).items() if key in keys}
    return {key: (None if key in GROUP_ORDER and value == "none" else value) for key, value in values.items()}


# ====================================================================== loading models
class ModelFolderError(SmashError):
    """A model folder or Hub id cannot be loaded as given (exit status 1)."""


#: Files a saved tokenizer consists of; a folder with none of them has no tokenizer (transformers would
#: otherwise build an empty one from the model's config, which smash would then save beside the model).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt", "merges.txt",
    "spiece.model", "sentencepiece.bpe.model", "special_tokens_map.json",
)
#: Weights as pickles, which smashlib never loads: unpickling runs whatever code the file names.
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def resolve_model_path(name: str) -> str:
    """A folder, a Hub id, or the bundled model's alias (``smollm2``) -> what from_pretrained takes."""
    if name.lower() in BUNDLED_ALIASES:
        from smashlib.bundled import smollm2_path

        return str(smollm2_path())
    looks_like_a_path = name.startswith(("/", "./", "../", "~")) or os.sep + os.sep in name or Path(name).exists()
    if looks_like_a_path and not Path(name).expanduser().exists():
        raise ModelFolderError(f"{name}: no such folder.")
    return str(Path(name).expanduser()) if looks_like_a_path else name


def is_smashed_folder(path: str) -> bool:
    from smashlib.serialization import MANIFEST_FILE

    return (Path(path) / MANIFEST_FILE).is_file()


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object, or a ModelFolderError naming the file and what is wrong."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ModelFolderError(f"{path} cannot be read as JSON ({type(error).__name__}: {error}).") from None
    except RecursionError:
        raise ModelFolderError(f"{path} is nested too deeply to be a model's JSON file: it is damaged.") from None
    if not isinstance(content, dict):
        raise ModelFolderError(f"{path} holds a JSON {type(content).__name__}, not an object: it is damaged.")
    return content


def check_local_folder(folder: Path, trust_remote_code: bool) -> dict[str, Any]:
    """Refuse, before transformers reads anything, a folder that is not a loadable safetensors model or
    whose config asks to run the folder's own code; returns its config.json."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelFolderError(
            f"{folder} has no config.json, so it is not a transformers model folder: save the model there with "
            "model.save_pretrained(folder), or give a Hub id."
        )
    model_config = read_json_object(config_file)
    if model_config.get("auto_map") and not trust_remote_code:
        code = sorted(p.name for p in folder.glob("*.py"))
        raise ModelFolderError(
            f"{config_file} has an auto_map: loading it runs Python code from the folder"
            f"{' (' + ', '.join(code) + ')' if code else ''}. Read that code, then pass --trust-remote-code to allow it."
        )
    if not any(folder.glob("*.safetensors")):
        pickles = sorted({p.name for pattern in PICKLE_WEIGHTS for p in folder.glob(pattern)})
        found = f"it holds {', '.join(pickles)}, pickled weights that smashlib never loads (unpickling can run code)" if (
            pickles) else "it holds no weights file"
        raise ModelFolderError(
            f"{folder} has no *.safetensors weights: {found}. Convert it once with transformers "
            "(model.save_pretrained(folder, safe_serialization=True)) in an environment you trust."
        )
    return model_config


def load_plain_model(path: str, device: str | None = None, trust_remote_code: bool = False) -> Any:
    """A transformers model from a folder or Hub id, as the class its config.json names; safetensors only,
    and the folder's own code runs only with ``trust_remote_code=True`` (never a question on stdin)."""
    import transformers

    if Path(path).is_dir():
        check_local_folder(Path(path), trust_remote_code)
    try:
        config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        architectures = getattr(config, "architectures", None) or []
        cls = next((getattr(transformers, name) for name in architectures if hasattr(transformers, name)), None)
        cls = cls or transformers.AutoModel
        model = cls.from_pretrained(path, trust_remote_code=trust_remote_code, use_safetensors=True).eval()
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ModelFolderError(f"cannot load a model from {path}: {_model_load_reason(path, error)}") from error
    return model.to(device) if device else model


def _model_load_reason(path: str, error: BaseException) -> str:
    from smashlib.components import hub_offline, invalid_hub_id

    invalid = None if Path(path).is_dir() else invalid_hub_id(path)
    if invalid:
        return f"it is neither a local folder nor a valid Hub id ({invalid}): give a folder or an id like 'owner/name'."
    if not Path(path).is_dir() and hub_offline():
        return ("it is not a local folder, and the Hugging Face Hub is offline (HF_HUB_OFFLINE is set): give a "
                "folder holding config.json and *.safetensors.")
    return f"{type(error).__name__}: {_one_line(error)[:300]}"


def has_tokenizer_files(path: str) -> bool:
    folder = Path(path)
    return not folder.is_dir() or any((folder / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    """The tokenizer saved beside a model, or None when the folder has none (or it cannot be read)."""
    if not has_tokenizer_files(path):
        return None
    from smashlib.components import load_pretrained
    from smashlib.errors import ComponentLoadError

    try:
        return load_pretrained("tokenizer", path, trust_remote_code=trust_remote_code)
    except ComponentLoadError:
        return None


def load_any(name: str, device: str | None = None, trust_remote_code: bool = False) -> tuple[Any, str]:
    """(model, path): a smashed folder loads as a SmashedModel, anything else as a transformers model."""
    path = resolve_model_path(name)
    if is_smashed_folder(path):
        from smashlib.model import SmashedModel

        return SmashedModel.from_pretrained(path, device=device, trust_remote_code=trust_remote_code), path
    return load_plain_model(path, device, trust_remote_code), path


def _prepare_transformers(quiet: bool) -> None:
    # transformers asks on stdin (for 15 s) whenever a call leaves trust_remote_code as None; the command
    # line passes it everywhere, and with the timeout at 0 a call that does not is refused, never asked
    import transformers.dynamic_module_utils as remote_code

    remote_code.TIME_OUT_REMOTE_CODE = 0
    if quiet:
        from transformers.utils import logging

        logging.disable_progress_bar()
        logging.set_verbosity_error()


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def _emit(args: argparse.Namespace, payload: Any, text: str) -> None:
    if args.json:
        try:
            text = json.dumps(payload, indent=2, default=str)
        except RecursionError:
            raise ModelFolderError("the result is nested too deeply to print as JSON (a damaged file?).") from None
    print(text)


# ====================================================================== commands
def cmd_smash(args: argparse.Namespace) -> int:
    from smashlib.config import SmashConfig
    from smashlib.model import SmashedModel
    from smashlib.smash import smash

    if not args.out and not args.report:
        raise CommandError("nothing to do: give --out DIR to save the smashed model, or --report to compare it.")
    config = SmashConfig(config_values(args), device=args.device)
    if not config.chosen_algorithms():
        raise CommandError("no algorithm chosen: add e.g. --quantizer torch_dynamic (see 'smashlib algorithms').")
    missing = config.missing_components()  # nothing is attached yet: everything the chosen algorithms need
    needs = {component: [a.name for a, c in missing if c == component] for component in ("tokenizer", "data")}
    if needs["data"] and not args.data:
        raise CommandError(f"{', '.join(needs['data'])} needs calibration data: add --data NAME (e.g. --data PydocTopics).")
    _prepare_transformers(args.quiet)
    path = resolve_model_path(args.model)
    trust = args.trust_remote_code
    if Path(path).is_dir():
        check_local_folder(Path(path), trust)  # before any tokenizer or model file is read
    if args.tokenizer:
        from smashlib.components import load_pretrained

        config.add_tokenizer(load_pretrained("tokenizer", resolve_model_path(args.tokenizer), trust_remote_code=trust))
    else:
        loaded = load_tokenizer(path, trust)
        if loaded is not None:
            config.add_tokenizer(loaded)
        elif needs["tokenizer"]:
            raise CommandError(
                f"{path} holds no tokenizer, which {', '.join(needs['tokenizer'])} needs: add --tokenizer DIR_OR_ID."
            )
    _say(args, f"loading {path}")
    model = load_plain_model(path, trust_remote_code=trust)
    if args.data:
        config.add_data(args.data)
    original = None
    if args.report:
        from smashlib.evaluation.smash_report import keep_original

        original = keep_original(model)
    smashed = smash(model, config, verbose=not args.quiet)
    payload: dict[str, Any] = {"model": path, "config": config.to_dict(), "algorithms": smashed.algorithms}
    lines = [f"smashed {path} with {', '.join(smashed.algorithms)}"]
    if args.out:
        if "save_pretrained" not in vars(SmashedModel):
            raise SmashError("saving needs SmashedModel.save_pretrained (smashlib.serialization), missing here.")
        saved = smashed.save_pretrained(args.out, format=args.format)
        payload["saved_to"] = str(saved)
        lines.append(f"saved to {saved}")
    if args.report:
        from smashlib.evaluation.smash_report import compare_after_smash

        report = compare_after_smash(original, smashed, not args.quiet, data=args.data or COMPARE_DATASET)
        payload["report"] = report.to_dict()
        lines += ["", str(report)]
    _emit(args, payload, "\n".join(lines))
    return 0


def _compare_metrics(args: argparse.Namespace, base: Any, smashed: Any, paths: tuple[str, str]) -> list[Any]:
    from smashlib.evaluation.metrics import DEFAULT_METRICS, get_metric

    names = [m.strip() for m in args.metrics.split(",")] if args.metrics else list(DEFAULT_METRICS)
    options: dict[str, dict[str, Any]] = {
        "latency": {"runs": args.runs},
        "generation": {"new_tokens": args.new_tokens, "runs": max(1, args.runs // 2)},
        "disk_size": {"folders": {model: path for model, path in zip((base, smashed), paths) if Path(path).is_dir()}},
    }
    return [get_metric(name, **options.get(name, {})) for name in names]


def cmd_compare(args: argparse.Namespace) -> int:
    from smashlib.evaluation.compare import compare

    _prepare_transformers(args.quiet)
    _say(args, f"loading {args.base} and {args.smashed}")
    trust = args.trust_remote_code
    base, base_path = load_any(args.base, args.device, trust)
    smashed, smashed_path = load_any(args.smashed, args.device, trust)
    components = getattr(getattr(smashed, "smash_config", None), "components", None)
    tokenizer = (getattr(components, "tokenizer", None) or load_tokenizer(smashed_path, trust)
                 or load_tokenizer(base_path, trust))
    report = compare(
        base, smashed, data=args.data, tokenizer=tokenizer, tokenizer_kwargs={"max_length": args.tokens},
        max_samples=args.samples, metrics=_compare_metrics(args, base, smashed, (base_path, smashed_path)),
        threads=args.threads, verbose=not args.quiet,
    )
    if args.plot:
        report.plot(args.plot)
        _say(args, f"chart written to {args.plot}")
    _emit(args, report.to_dict(), str(report))
    return 0


def _folder_summary(path: Path) -> dict[str, Any]:
    from smashlib.evaluation.metrics.size import MB, folder_bytes

    weights, everything = folder_bytes(path)
    return {"weights_mb": round(weights / MB, 2), "folder_mb": round(everything / MB, 2)}


def cmd_info(args: argparse.Namespace) -> int:
    folder = Path(resolve_model_path(args.folder))
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: no such folder.")
    sizes = _folder_summary(folder)
    if not is_smashed_folder(str(folder)):
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise ModelFolderError(f"{folder} holds neither a smashed model (smash_config.json) nor a model (config.json).")
        model_config = read_json_object(config_file)
        architectures = [str(a) for a in _as(list, model_config.get("architectures"))]
        dtype = model_config.get("dtype") or model_config.get("torch_dtype")
        payload = {"folder": str(folder), "smashed": False, "architectures": architectures or None,
                   "dtype": dtype if isinstance(dtype, str) else None, **sizes}
        text = (f"{folder}: a plain model ({', '.join(architectures or ['unknown class'])}, "
                f"{payload['dtype'] or 'dtype not recorded'}), not smashed by smashlib\n"
                f"weights on disk: {sizes['weights_mb']} MB (folder {sizes['folder_mb']} MB)")
        _emit(args, payload, text)
        return 0
    from smashlib.serialization import MANIFEST_FILE, read_manifest

    try:
        manifest = read_manifest(folder)
    except RecursionError:
        raise ModelFolderError(f"{folder / MANIFEST_FILE} is nested too deeply to be a smashlib manifest: it is damaged.") from None
    _emit(args, {"folder": str(folder), "smashed": True, **sizes, "smash_config": manifest}, describe_manifest(folder, manifest, sizes))
    return 0


def _as(kind: type, value: Any) -> Any:
    """``value`` when it is of ``kind`` (dict or list), else an empty one: `info` describes a damaged manifest
    as far as it can instead of failing on the first field of the wrong JSON type."""
    return value if isinstance(value, kind) else kind()


def _short(value: Any, limit: int = 200) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_manifest(folder: Path, manifest: dict[str, Any], sizes: dict[str, Any]) -> str:
    """What `smashlib info` prints for a smashed folder: what it is, how it was made, with what."""
    saved = _as(dict, manifest.get("saved_model"))
    model = _as(dict, saved.get("model"))
    versions = _as(dict, saved.get("versions"))
    head = (f"{folder}: a {_short(model.get('class', 'model'))} smashed by smashlib ({_short(model.get('library', '?'))} "
            f"model, {_short(model.get('dtype', '?'))}, device {_short(manifest.get('device', '?'))})")
    lines = [head]
    algorithms = _as(list, saved.get("algorithms"))
    lines.append("made with, in the order applied:" if algorithms else "made with: no algorithm")
    for entry in algorithms:
        if not isinstance(entry, dict):
            lines.append(f"  {_short(entry)}  [not an algorithm entry: the manifest is damaged]")
            continue
        settings = ", ".join(f"{k}={v!r}" for k, v in _as(dict, entry.get("settings")).items())
        lines.append(f"  {_short(entry.get('group', '?')):<10} {_short(entry.get('name', '?'))}({_short(settings, 400)})  "
                     f"[{_short(entry.get('restored', ''))}]")
    for name, description in _as(dict, manifest.get("components")).items():
        lines.append(f"{name}: {_short(description)}")
    lines.append("saved by: " + ", ".join(f"{k} {_short(v)}" for k, v in versions.items()))
    weights = _as(dict, saved.get("weights"))
    lines.append(f"weights on disk: {sizes['weights_mb']} MB ({_short(weights.get('tensors', '?'))} tensors in "
                 f"{_short(weights.get('file', '?'))}); folder {sizes['folder_mb']} MB")
    lines.append(f"load it: SmashedModel.from_pretrained({str(folder)!r})")
    measured = _as(dict, saved.get("report")).get("markdown")
    if isinstance(measured, str) and measured:
        lines += ["", "measured before saving:", measured]
    return "\n".join(lines)


def _text_or_dash(values: Sequence[Any]) -> str:
    return ", ".join(str(v) for v in values) or "-"


def cmd_algorithms(args: argparse.Namespace) -> int:
    from smashlib.evaluation.formatting import text_table
    from smashlib.registry import algorithms_table

    rows = algorithms_table()
    if args.group:
        from smashlib.algorithm import GROUP_ORDER
        from smashlib.errors import did_you_mean

        if args.group not in GROUP_ORDER:
            raise CommandError(
                f"unknown group '{args.group}'.{did_you_mean(args.group, GROUP_ORDER)} Groups: {', '.join(GROUP_ORDER)}."
            )
        rows = [row for row in rows if row["group"] == args.group]
    table = []
    for row in rows:
        needs = ([row["needs"]] if row["needs"] else []) + list(row["needs_packages"])
        if not row["available"]:
            needs.append("(not installed)")
        hyperparameters = "; ".join(
            f"{key.removeprefix(row['name'] + '_')}={spec['default']}" for key, spec in row["hyperparameters"].items()
        )
        table.append([row["group"], row["name"], _text_or_dash(row["runs_on"]), _text_or_dash(needs), hyperparameters or "-"])
    text = text_table(["group", "algorithm", "devices", "needs", "hyperparameters (default)"], table, right_from=99)
    _emit(args, rows, text + "\n\nflags: smashlib smash MODEL --<group> NAME --<algorithm>-<hyperparameter> VALUE")
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from smashlib.evaluation.formatting import text_table
    from smashlib.evaluation.metrics import metrics_table

    rows = metrics_table()
    table = [[row["name"], ", ".join(row["values"]), row["summary"]] for row in rows]
    _emit(args, rows, text_table(["metric", "values", "what it measures"], table, right_from=99))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from smashlib.evaluation.demo import run_demo

    _prepare_transformers(args.quiet)
    report = run_demo(verbose=not args.quiet, threads=args.threads)
    if args.plot:
        report.plot(args.plot)
        _say(args, f"chart written to {args.plot}")
    _emit(args, report.to_dict(), str(report))
    return 0


# ====================================================================== parser
def _common(parser: argparse.ArgumentParser, top_level: bool = False) -> None:
    # on subcommands the defaults are SUPPRESS, so `smashlib --json info DIR` and `smashlib info DIR --json` agree
    default: Any = False if top_level else argparse.SUPPRESS
    parser.add_argument("--quiet", action="store_true", default=default, help="no progress bars or status lines")
    parser.add_argument("--json", action="store_true", default=default, help="print the result as JSON")


def _trust_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-remote-code", action="store_true",
        help="allow a folder's or Hub repository's own Python files (config.json auto_map) to run; without it "
        "such a model is refused, never asked about",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="smashlib", description="Make Hugging Face models smaller and faster, and measure it.")
    _common(parser, top_level=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    smash_parser = commands.add_parser(
        "smash", help="smash a model folder or Hub id and save it",
        description="Smash MODEL (a folder, a Hub id, or 'smollm2' for the bundled model) with the algorithms given "
        "as flags; save it with --out, compare it with the original with --report.",
    )
    smash_parser.add_argument("model", metavar="MODEL_DIR_OR_ID")
    smash_parser.add_argument("--out", metavar="DIR", help="folder to save the smashed model to")
    smash_parser.add_argument(
        "--format", default="smashlib", choices=sorted(FORMATS),
        help="how --out is written: smashlib's folder (default), compressed-tensors (transformers, vLLM) or gguf "
        "(llama.cpp: a file; needs --gptq-grid q8_0|q4_0|q4_1); see docs/export.md",
    )
    smash_parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    smash_parser.add_argument("--tokenizer", metavar="DIR_OR_ID", help="default: the tokenizer saved with the model")
    smash_parser.add_argument("--data", metavar="NAME", help="dataset for calibration (cfg.add_data), e.g. PydocTopics")
    smash_parser.add_argument("--report", action="store_true", help="compare with the original and print the table")
    _trust_flag(smash_parser)
    _common(smash_parser)
    add_registry_flags(smash_parser)
    smash_parser.set_defaults(handler=cmd_smash)

    compare_parser = commands.add_parser(
        "compare", help="compare a base model with a smashed one",
        description="Measure BASE and SMASHED (folders, Hub ids, or 'smollm2') on the same inputs, interleaved.",
    )
    compare_parser.add_argument("base", metavar="BASE")
    compare_parser.add_argument("smashed", metavar="SMASHED")
    compare_parser.add_argument("--data", default=COMPARE_DATASET, metavar="NAME", help=f"dataset name (default {COMPARE_DATASET})")
    compare_parser.add_argument("--samples", type=int, default=COMPARE_SAMPLES, help=f"samples to evaluate on (default {COMPARE_SAMPLES})")
    compare_parser.add_argument("--tokens", type=int, default=COMPARE_TOKENS, help=f"tokens per sample (default {COMPARE_TOKENS})")
    compare_parser.add_argument("--metrics", metavar="A,B,...", help="metrics to measure (default: all that apply; see 'smashlib metrics')")
    compare_parser.add_argument("--runs", type=int, default=10, help="timed runs per model (default 10)")
    compare_parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per decode run (default 32)")
    compare_parser.add_argument("--threads", type=int, help="torch threads for both models (default: torch's)")
    compare_parser.add_argument("--device", choices=["cpu", "cuda"], help="device to load the models on")
    compare_parser.add_argument("--plot", metavar="PNG", help="also save a bar chart of the ratios (needs matplotlib)")
    _trust_flag(compare_parser)
    _common(compare_parser)
    compare_parser.set_defaults(handler=cmd_compare)

    info_parser = commands.add_parser("info", help="what a saved model is and how it was made")
    info_parser.add_argument("folder", metavar="DIR")
    _common(info_parser)
    info_parser.set_defaults(handler=cmd_info)

    algorithms_parser = commands.add_parser("algorithms", help="the table of algorithms")
    algorithms_parser.add_argument("--group", help="only this group's algorithms")
    _common(algorithms_parser)
    algorithms_parser.set_defaults(handler=cmd_algorithms)

    metrics_parser = commands.add_parser("metrics", help="the metrics compare can measure")
    _common(metrics_parser)
    metrics_parser.set_defaults(handler=cmd_metrics)

    demo_parser = commands.add_parser(
        "demo", help="smash the bundled SmolLM2-135M and compare it with the original",
        description="Smash SmolLM2-135M-Instruct (bundled) with the best CPU recipe and compare on real text.",
    )
    demo_parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    demo_parser.add_argument("--plot", metavar="PNG", help="also save a bar chart of the ratios (needs matplotlib)")
    _common(demo_parser)
    demo_parser.set_defaults(handler=cmd_demo)

    from smashlib.tuning.cli import add_tune_command  # tune's own module: SMAC is imported only when it runs

    add_tune_command(commands, _common)
    return parser


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


#: Dependencies' loggers whose warnings on a CPU machine are noise to a command-line user: torchao (imported
#: by transformers when installed) reports each CUDA-only extension it cannot load, and torch's pytree
#: warns about torchao's enum registrations. Library users keep them; the command line shows errors only.
NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 1 the work failed, 2 bad arguments)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or a bad argument (already reported in one line)
        return int(exit_.code or 0)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except (CommandError, SmashConfigError) as error:
        print(f"smashlib {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except (SmashError, OSError) as error:
        print(f"smashlib {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"smashlib {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # the command line promises one line, never a traceback
        if os.environ.get("SMASHLIB_DEBUG"):
            raise
        print(f"smashlib {args.command}: error: unexpected {type(error).__name__}: {_one_line(error)[:500]} "
              "(run with SMASHLIB_DEBUG=1 for the traceback, and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
