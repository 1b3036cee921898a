"""tessera's in-process Flower ``Grid``: the federation's nodes are ClientApp calls in this process, without ray
or a SuperLink.

Each node has a ``partition-id`` in its node config, as a Flower SuperNode started with ``--node-config
"partition-id=N num-partitions=M"`` does, so the same ClientApp runs here and on a deployment. Messages are
deep-copied both ways (a real grid serialises them: a client never shares a tensor with the server). A ClientApp
that raises, and a node that ``dropout`` makes miss the round (simulated faults, seeded per round), answer with
an error reply, as a SuperLink reports a node that failed.
"""

from __future__ import annotations

import copy
import random
import uuid
from collections.abc import Callable, Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run as FlowerRun

#: The error code of a reply from a node that failed or did not answer (Flower's ``ErrorCode.UNKNOWN``).
NODE_FAILED = 0


class InProcessGrid(Grid):
    """``clients`` nodes (node ids 1..clients, partition ids 0..clients-1) answering through ``client_app``."""

    def __init__(self, client_app: Callable, clients: int, run_config: dict, dropout: float = 0.0, seed: int = 0):
        self.client_app, self.run_config, self.dropout, self.seed = client_app, run_config, dropout, seed
        self.partitions = {node: node - 1 for node in range(1, clients + 1)}
        self.states = {node: RecordDict() for node in self.partitions}
        self._run = FlowerRun.create_empty(1)
        self._replies: dict[str, Message] = {}

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.partitions)

    def context(self, node: int) -> Context:
        """The node's Flower context: its partition in the node config, its own state across rounds."""
        node_config = {"partition-id": self.partitions[node], "num-partitions": len(self.partitions)}
        return Context(self._run.run_id, node, node_config, self.states[node], dict(self.run_config))

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        messages = list(messages)
        dropped = self._dropped(messages)
        for message in messages:
            message.metadata.__dict__["_run_id"] = self._run.run_id
            message.metadata.__dict__["_src_node_id"] = 0
            message.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            node = message.metadata.dst_node_id
            if node in dropped:
                reply = Message(Error(NODE_FAILED, "the node dropped out of the round"), reply_to=message)
            else:
                try:
                    reply = copy.deepcopy(self.client_app(copy.deepcopy(message), self.context(node)))
                except Exception as error:  # a failing client is a lost reply, as on a deployment
                    reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''}"
                    reply = Message(Error(NODE_FAILED, reason), reply_to=message)
            self._replies[message.metadata.message_id] = reply
            ids.append(message.metadata.message_id)
        return ids

    def _dropped(self, messages: list[Message]) -> set[int]:
        """The nodes that simulated faults make miss these messages (seeded by the server round they carry)."""
        if not self.dropout or not messages:
            return set()
        config = messages[0].content.config_records.get("config")
        server_round = int(config.get("server-round", 0)) if config else 0
        nodes = {message.metadata.dst_node_id for message in messages}
        return {
            n for n in nodes if random.Random((self.seed * 10_007 + server_round) * 10_007 + n).random() < self.dropout
        }

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(message_id) for message_id in message_ids if message_id in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
