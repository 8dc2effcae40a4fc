"""Which Kafka containers a run removes as orphans (a scripted engine client)."""

from __future__ import annotations

import os
from typing import Any

from stream import docker_kafka as dk

DEAD = 2**22 + 12345  # above the default pid_max: no such process


class Container:
    def __init__(self, name: str, labels: dict[str, str]) -> None:
        self.name, self.labels, self.removed = name, labels, False

    def remove(self, **kw: Any) -> None:
        self.removed = True


class Client:
    def __init__(self, containers: list[Container]) -> None:
        self.containers = self
        self._all = containers

    def list(self, **kw: Any) -> list[Container]:
        return self._all


def test_only_this_machines_containers_of_dead_processes_go() -> None:
    me, label, host = str(os.getpid()), dk._CONTAINER_LABEL, dk._HOST_LABEL
    here = dk._host_id()
    cs = [Container("dead-here", {label: str(DEAD), host: here}),
          Container("alive-here", {label: me, host: here}),
          Container("elsewhere", {label: str(DEAD), host: "another-boot-id"}),
          Container("older-run", {label: str(DEAD)})]  # before the host label existed
    dk._remove_orphan_kafka_containers(Client(cs))
    assert {c.name: c.removed for c in cs} == {
        "dead-here": True, "alive-here": False, "elsewhere": False, "older-run": True}
