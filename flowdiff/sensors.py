"""Many sensors, one store: which sensors a command acts on (``--sensor NAME`` or ``--sensor all``).

Each sensor writes its own ``sensor=<name>`` partition of every table, its own ledger and takes its own
lock (flowdiff.store), so sensors never block each other. What learn and diff read depends on
``baseline_scope``: ``"sensor"`` (default) keeps a baseline per sensor, learned from and compared with
that sensor's partition only; ``"all"`` keeps one baseline, learned from every sensor, and diff compares
the rows of every sensor, added up, with it.
"""

from __future__ import annotations

from flowdiff.compact import store_sensors
from flowdiff.config import Config
from flowdiff.errors import ConfigError

ALL = "all"

__all__ = ["ALL", "claim_baselines", "sensor_configs"]


def sensor_configs(config: Config, choice: str | None, *, shared_ok: bool = True) -> list[Config]:
    """The configs a command runs with: the config's own sensor (``choice`` None), one named sensor, or
    every sensor with a partition in the store (``"all"``). ``shared_ok=False`` (learn, diff): with a
    shared baseline they always cover every sensor, so naming one is refused."""
    if choice is None:
        return [config.for_sensor(config.sensor)]
    if config.baseline_scope == ALL:
        if choice != ALL and not shared_ok:
            raise ConfigError(
                f'baseline_scope = "all": learn and diff cover every sensor; leave out --sensor {choice}',
                key="--sensor",
            )
        return [config if choice == ALL else config.for_sensor(choice)]
    if choice == ALL:
        names = store_sensors(config.store) or [config.sensor]
        return [config.for_sensor(n) for n in names]
    return [config.for_sensor(choice)]


def claim_baselines(config: Config) -> None:
    """The first learn into a baselines folder records which sensor it belongs to (see
    :meth:`Config.for_sensor`), so that every other sensor's config finds its own baselines elsewhere."""
    from flowdiff.config import BASELINES_OWNER
    from flowdiff.durable import atomic_write_text

    if config.baseline_scope != "sensor" or config.baselines.parent.name == "sensors":
        return
    marker = config.baselines / BASELINES_OWNER
    if not marker.exists():
        atomic_write_text(marker, config.sensor + "\n")
