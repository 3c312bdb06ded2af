"""The ``compression`` section of an experiment (and of a site's ``site_options``)."""

from __future__ import annotations

from dataclasses import fields
from typing import Annotated, Any

from pydantic import model_validator

from proxyflox.codecs import CODECS, LOSSLESS, ROUNDINGS, SCALES, CodecSpec
from proxyflox.schema import Bool, Settings, Share, Str, one_of

BROADCASTS = ("exact", "fp16")


class CodecSettings(Settings):
    """How a site encodes its update: the site's change from the global model it received.

    A plain string is taken as the codec's name (``compression: fp16``).
    """

    #: ``none`` (full float32 weights, as without compression), ``fp16``, ``int8`` or ``topk``.
    codec: Annotated[Str, one_of(CODECS)] = "none"
    #: ``topk``: the fraction of each tensor's entries sent.
    ratio: Share = 0.01
    #: ``int8``: one scale per output channel (``per_channel``) or per tensor (``per_tensor``).
    scale: Annotated[Str, one_of(SCALES)] = "per_channel"
    #: ``int8``: ``nearest`` (error at most half a step) or ``stochastic`` (unbiased).
    rounding: Annotated[Str, one_of(ROUNDINGS)] = "nearest"
    #: A lossless stage after the codec: ``none`` or ``zstd`` (extra ``proxyflox[zstd]``).
    lossless: Annotated[Str, one_of(LOSSLESS)] = "none"
    #: Lossy codecs: keep what was not sent (on the site) and add it to the next change.
    error_feedback: Bool = True

    @model_validator(mode="before")
    @classmethod
    def _name_alone(cls, data: Any) -> Any:
        return {"codec": data} if isinstance(data, str) else data

    def spec(self) -> CodecSpec:
        """What the site's apps are told (the settings of the same names)."""
        return CodecSpec(**{field.name: getattr(self, field.name) for field in fields(CodecSpec)})


class CompressionSettings(CodecSettings):
    """The experiment's ``compression``: every site's codec, and the global model's broadcast."""

    #: How the aggregator sends the global model: ``exact`` or ``fp16`` (the global model is
    #: then kept at half precision, so checkpoints and resumes see what the sites saw).
    broadcast: Annotated[Str, one_of(BROADCASTS)] = "exact"
