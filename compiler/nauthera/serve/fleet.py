"""What the OPA fleet reports: agents from the status API and denied decisions from decision logs.

Both are bounded in memory: at most `max_agents` agents (least recently seen evicted first) and the most
recent `max_events` denied decisions. Nothing here touches the network or the disk.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

DECISION_PATH = "nauthera/authclient/decision"
CHANNEL_LABEL = "nauthera.io/channel"


@dataclass
class Agent:
    id: str
    labels: dict[str, str]
    bundles: dict[str, dict[str, Any]]
    errors: list[str]
    last_seen: float
    plugins: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ChannelState:
    revision: str | None
    updated: float


class AgentRegistry:
    """Latest status per OPA agent, and which of them lag behind their channel."""

    def __init__(
        self, max_agents: int = 100_000, stale_after: float = 30.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.max_agents = max_agents
        self.stale_after = stale_after
        self.clock = clock
        self._agents: OrderedDict[str, Agent] = OrderedDict()

    def __len__(self) -> int:
        return len(self._agents)

    def record_status(self, status: Mapping[str, Any]) -> Agent:
        """Store one status report (OPA's status API body); raises ValueError on a shapeless one."""
        labels = status.get("labels")
        if not isinstance(labels, dict) or not isinstance(labels.get("id"), str):
            raise ValueError("status report has no labels.id")
        bundles = status.get("bundles") if isinstance(status.get("bundles"), dict) else {}
        errors = [
            f"bundle {name}: {info.get('message') or info.get('code')}"
            for name, info in sorted((bundles or {}).items())
            if isinstance(info, dict) and (info.get("code") or info.get("errors"))
        ]
        agent = Agent(
            id=labels["id"],
            labels={str(k): str(v) for k, v in labels.items()},
            bundles={str(k): v for k, v in (bundles or {}).items() if isinstance(v, dict)},
            errors=errors,
            last_seen=self.clock(),
            plugins=dict(status["plugins"]) if isinstance(status.get("plugins"), dict) else {},
        )
        self._agents.pop(agent.id, None)
        self._agents[agent.id] = agent
        while len(self._agents) > self.max_agents:
            self._agents.popitem(last=False)
        return agent

    def channel_of(
        self, agent: Agent, bundle_name: str, channels: Mapping[str, ChannelState], default_channel: str
    ) -> str:
        """A bundle named like a channel follows that channel; otherwise the agent's label or the default."""
        if bundle_name in channels:
            return bundle_name
        return agent.labels.get(CHANNEL_LABEL, default_channel)

    def describe(self, channels: Mapping[str, ChannelState], default_channel: str) -> list[dict[str, Any]]:
        """Every agent with its bundles' revisions and whether it is stale, newest report first."""
        now = self.clock()
        described = []
        for agent in reversed(self._agents.values()):
            bundles = {}
            for name, info in sorted(agent.bundles.items()):
                channel = self.channel_of(agent, name, channels, default_channel)
                state = channels.get(channel)
                active = info.get("active_revision")
                lagging = state is not None and state.revision is not None and active != state.revision
                stale = lagging and state is not None and now - state.updated > self.stale_after
                bundles[name] = {
                    "active_revision": active,
                    # How the agent got it: "snapshot", or "delta" for a patch to what it had.
                    "type": info.get("type"),
                    "channel": channel,
                    "channel_revision": state.revision if state else None,
                    "stale": stale,
                }
            described.append(
                {
                    "id": agent.id,
                    "labels": agent.labels,
                    "bundles": bundles,
                    "errors": agent.errors,
                    "last_seen": agent.last_seen,
                    "stale": any(b["stale"] for b in bundles.values()),
                }
            )
        return described


@dataclass(frozen=True)
class DeniedDecision:
    timestamp: float
    client: str
    policy: str | None
    field: str


class DecisionLog:
    """Denied decisions from OPA decision logs, summarised by policy, field and client."""

    def __init__(self, max_events: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._events: deque[DeniedDecision] = deque(maxlen=max_events)
        self.received = 0

    def ingest(self, events: Iterable[Any]) -> int:
        """Keep the denied Nauthera decisions of one upload; return how many were denied."""
        denied = 0
        for event in events:
            self.received += 1
            if not isinstance(event, dict) or str(event.get("path", "")).strip("/") != DECISION_PATH:
                continue
            result, client = event.get("result"), event.get("input")
            if not isinstance(result, dict) or result.get("allowed") is not False:
                continue
            metadata = client.get("metadata") if isinstance(client, dict) else None
            metadata = metadata if isinstance(metadata, dict) else {}
            name = f"{metadata.get('namespace', '?')}/{metadata.get('name', '?')}"
            for violation in result.get("violations") or ():
                if isinstance(violation, dict):
                    self._events.append(
                        DeniedDecision(
                            self.clock(), name, violation.get("policy"), str(violation.get("field"))
                        )
                    )
            denied += 1
        return denied

    def summary(self, since: float | None = None) -> list[dict[str, Any]]:
        """Counts per (policy, field, client), most frequent first."""
        cutoff = self.clock() - since if since is not None else float("-inf")
        counts = Counter((e.policy, e.field, e.client) for e in self._events if e.timestamp >= cutoff)
        ordered = sorted(counts.items(), key=lambda item: (-item[1], str(item[0][0]), item[0][1], item[0][2]))
        return [{"policy": p, "field": f, "client": c, "count": n} for (p, f, c), n in ordered]
