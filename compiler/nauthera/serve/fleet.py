"""What the OPA fleet reports: agents from the status API and denied decisions from decision logs.

Both are bounded in memory whatever agents send: a status report keeps only what `agents` shows (its
id and labels, each bundle's revision and error, every text cut to `MAX_TEXT` characters, at most
`MAX_LABELS` labels and `MAX_BUNDLES` bundles), the registry holds at most `max_agents` agents and
`max_bytes` of them (least recently seen evicted first), and the decision log the most recent
`max_events` denied decisions, each text cut likewise. Nothing here touches the network or the disk.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

DECISION_PATH = "nauthera/authclient/decision"
CHANNEL_LABEL = "nauthera.io/channel"
#: Longest agent id, label name or value, bundle name, revision and message kept from a report.
MAX_TEXT = 256
MAX_LABELS = 64
MAX_BUNDLES = 64
#: What an agent costs beyond its texts (objects and containers), for the registry's byte budget.
_AGENT_OVERHEAD = 512
_ITEM_OVERHEAD = 64


@dataclass
class Agent:
    id: str
    labels: dict[str, str]
    #: Per bundle: `active_revision` and `type` (snapshot or delta), all `describe` shows.
    bundles: dict[str, dict[str, str | None]]
    errors: list[str]
    last_seen: float

    def size(self) -> int:
        """Roughly what the agent takes in memory, for the registry's byte budget."""
        texts = [self.id, *self.labels, *self.labels.values(), *self.errors]
        for name, info in self.bundles.items():
            texts += [name, *(v for v in info.values() if v is not None)]
        return _AGENT_OVERHEAD + sum(len(text) + _ITEM_OVERHEAD for text in texts)


def _text(value: Any) -> str:
    return str(value)[:MAX_TEXT]


def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)


@dataclass(frozen=True)
class ChannelState:
    revision: str | None
    updated: float


class AgentRegistry:
    """Latest status per OPA agent, and which of them lag behind their channel."""

    def __init__(
        self,
        max_agents: int = 100_000,
        stale_after: float = 30.0,
        clock: Callable[[], float] = time.time,
        max_bytes: int = 128 * 1024 * 1024,
    ) -> None:
        self.max_agents = max_agents
        self.max_bytes = max_bytes
        self.stale_after = stale_after
        self.clock = clock
        self._agents: OrderedDict[str, Agent] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._agents)

    def record_status(self, status: Any) -> Agent:
        """Store what `describe` needs of one status report (OPA's status API body); raises ValueError
        on a report without the shape OPA sends or with an id or labels beyond the limits."""
        if not isinstance(status, dict):
            raise ValueError("a status report is a JSON object")
        labels = status.get("labels")
        if not isinstance(labels, dict) or not isinstance(labels.get("id"), str) or not labels["id"]:
            raise ValueError("status report has no labels.id")
        if len(labels) > MAX_LABELS:
            raise ValueError(f"status report has {len(labels)} labels, more than {MAX_LABELS}")
        too_long = next((k for k, v in labels.items() if len(k) > MAX_TEXT or len(str(v)) > MAX_TEXT), None)
        if too_long is not None:
            raise ValueError(f"label {too_long[:40]!r}: names and values are at most {MAX_TEXT} characters")
        reported = status.get("bundles")
        bundles = sorted(reported.items())[:MAX_BUNDLES] if isinstance(reported, dict) else []
        errors = [
            _text(f"bundle {name}: {info.get('message') or info.get('code')}")
            for name, info in bundles
            if isinstance(info, dict) and (info.get("code") or info.get("errors"))
        ]
        agent = Agent(
            id=labels["id"],
            labels={k: str(v) for k, v in labels.items()},
            bundles={
                _text(name): {
                    "active_revision": _optional_text(info.get("active_revision")),
                    "type": _optional_text(info.get("type")),
                }
                for name, info in bundles
                if isinstance(info, dict)
            },
            errors=errors,
            last_seen=self.clock(),
        )
        self._forget(agent.id)
        self._agents[agent.id] = agent
        self.bytes += agent.size()
        while len(self._agents) > self.max_agents or self.bytes > self.max_bytes:
            self._forget(next(iter(self._agents)))
        return agent

    def _forget(self, agent_id: str) -> None:
        gone = self._agents.pop(agent_id, None)
        if gone is not None:
            self.bytes -= gone.size()

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
            name = _text(f"{metadata.get('namespace', '?')}/{metadata.get('name', '?')}")
            violations = result.get("violations")
            for violation in violations if isinstance(violations, list) else ():
                if isinstance(violation, dict):
                    policy = _optional_text(violation.get("policy"))
                    self._events.append(
                        DeniedDecision(self.clock(), name, policy, _text(violation.get("field")))
                    )
            denied += 1
        return denied

    def summary(self, since: float | None = None) -> list[dict[str, Any]]:
        """Counts per (policy, field, client), most frequent first."""
        cutoff = self.clock() - since if since is not None else float("-inf")
        counts = Counter((e.policy, e.field, e.client) for e in self._events if e.timestamp >= cutoff)
        ordered = sorted(counts.items(), key=lambda item: (-item[1], str(item[0][0]), item[0][1], item[0][2]))
        return [{"policy": p, "field": f, "client": c, "count": n} for (p, f, c), n in ordered]
