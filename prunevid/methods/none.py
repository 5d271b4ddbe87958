"""``none``: no pruning; the patch only records statistics, outputs equal the unpatched model's."""
from __future__ import annotations

import dataclasses

from .base import ConfigMixin, Method


@dataclasses.dataclass
class NoneConfig(ConfigMixin):
    """No parameters."""


class NoneMethod(Method):
    name = "none"
    config_class = NoneConfig
