"""Saving and loading ``LongCtxLM`` checkpoints: a directory with ``config.json`` and ``model.pt``.

``config.json`` = ``{"format": "longctx-lm", "version": 1, "lm_config": {...}, "meta": {...}}``;
``meta`` carries what a user of the model needs (tokenizer, corpus, trained length). Both files
are written atomically (a temporary file, then ``os.replace``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from longctx.models.lm import LMConfig, LongCtxLM

FORMAT, VERSION = "longctx-lm", 1


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_lm(model: LongCtxLM, path: str | Path, meta: dict | None = None) -> Path:
    """Write ``model`` (config + weights) and ``meta`` into the directory ``path``."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _atomic_write(p / "model.pt", lambda t: torch.save(state, t))
    config = {"format": FORMAT, "version": VERSION, "lm_config": model.config.to_dict(), "meta": meta or {}}
    _atomic_write(p / "config.json", lambda t: t.write_text(json.dumps(config, indent=1), encoding="utf-8"))
    return p


def is_longctx_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a directory written by ``save_lm``."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("format") == FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def read_config(path: str | Path) -> dict:
    """The checkpoint's ``config.json``, checked; a clear error naming what is wrong."""
    p = Path(path)
    if not p.is_dir():
        raise ValueError(f"checkpoint {str(path)!r} is not a directory")
    cfg_path = p / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"checkpoint {str(p)!r} has no config.json")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"checkpoint {str(p)!r}: config.json is not valid JSON ({e})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise ValueError(f"checkpoint {str(p)!r}: config.json is not a longctx LM config "
                         f"(format {cfg.get('format') if isinstance(cfg, dict) else None!r}, expected {FORMAT!r})")
    if cfg.get("version") != VERSION:
        raise ValueError(f"checkpoint {str(p)!r}: version {cfg.get('version')!r}, this longctx reads {VERSION}")
    if not isinstance(cfg.get("lm_config"), dict):
        raise ValueError(f"checkpoint {str(p)!r}: config.json has no lm_config")  # noqa: TRY004
    return cfg


def load_lm(path: str | Path, device: str | torch.device | None = None) -> tuple[LongCtxLM, dict]:
    """``(model, meta)`` from a ``save_lm`` directory; the model is in eval mode."""
    p = Path(path)
    cfg = read_config(p)
    try:
        lm_config = LMConfig(**cfg["lm_config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {str(p)!r}: bad lm_config: {e}") from None
    weights = p / "model.pt"
    if not weights.is_file():
        raise ValueError(f"checkpoint {str(p)!r} has no model.pt")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch raises several types for a damaged file)
        raise ValueError(f"checkpoint {str(p)!r}: model.pt cannot be read ({type(e).__name__}: {e})") from None
    model = LongCtxLM(lm_config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        raise ValueError(f"checkpoint {str(p)!r}: weights do not match the config "
                         f"(missing {missing[:3]}, unexpected {extra[:3]})")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(f"checkpoint {str(p)!r}: weight {k!r} has shape {list(state[k].shape)}, "
                             f"the config gives {list(v.shape)}")
    model.load_state_dict(state)
    return model.to(device or "cpu").eval(), cfg.get("meta") or {}
