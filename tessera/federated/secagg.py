"""Secure aggregation of a federation's rounds (``federated.privacy.secagg``): Flower's SecAgg+ protocol (Bell et
al. 2020), the legacy ``flwr.server.workflow.SecAggPlusWorkflow`` driven against tessera's grid, with Flower's
``secaggplus_mod`` on the clients.

Each round runs SecAgg+'s four stages instead of one train exchange: *setup* (the clients make key pairs),
*share keys* (each shares its secrets among its neighbours, Shamir-split, encrypted), *collect masked vectors*
(each trains, then uploads ``[w, w * params]`` quantised to integers and masked with pairwise and private masks)
and *unmask* (the survivors send the shares that remove the masks of the sum). The server learns only the
weighted sum of the clients' parameters, never one client's update; a client lost after sharing its keys is
recovered from its neighbours' shares while enough of them (the reconstruction threshold) answer.

:func:`secure_round` returns one reply per client that took part, each carrying the *same* arrays, the weighted
average ``sum(w_k * params_k) / sum(w_k)`` (``w_k``: the reply's ``num-examples``, at most
``secagg_max_weight``), with that client's metrics; the aggregator's ``aggregate_train`` then computes exactly
what it would from the individual updates, for any aggregator whose result depends on the updates only through
their weighted sum (``Aggregator.sum_only``: FedAvg, FedProx, FedAdam...). The values are clipped to
``+-secagg_clipping_range`` and stochastically rounded to ``secagg_quantization_range`` levels, so the average is
exact up to :func:`quantisation_error`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from tessera.federated.grid import NODE_FAILED

log = logging.getLogger("tessera")


def client_mods() -> list:
    """The client mods of secure aggregation, outermost first: Flower's ``secaggplus_mod``, then
    :func:`legacy_fit_mod` between it and the Message API ``ClientApp`` (and any clipping mods)."""
    from flwr.client.mod import secaggplus_mod

    return [secaggplus_mod, legacy_fit_mod]


def legacy_fit_mod(msg: Message, ctxt: Context, call_next) -> Message:
    """Adapt the Message API ``ClientApp`` to ``secaggplus_mod``, which speaks the legacy fit records: the
    SecAgg+ config record is taken out of the message the app sees (the clipping mods want one config record),
    and the app's reply ``{"arrays", "metrics"}`` becomes a legacy ``FitRes`` (parameters in the order of the
    arrays the server sent, ``num_examples`` from the ``num-examples`` metric)."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common.recorddict_compat import fitres_to_recorddict

    if RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, ctxt)
    del msg.content[RECORD_KEY_CONFIGS]
    names = list(msg.content.array_records["arrays"].keys())
    out = call_next(msg, ctxt)
    if out.has_error():
        return out
    trained = out.content.array_records["arrays"].to_numpy_ndarrays()
    by_name = dict(zip(out.content.array_records["arrays"].keys(), trained))
    metrics = dict(out.content.metric_records["metrics"])
    fitres = FitRes(
        Status(Code.OK, ""),
        ndarrays_to_parameters([by_name[name] for name in names]),
        int(metrics["num-examples"]),
        metrics,
    )
    return Message(fitres_to_recorddict(fitres, False), reply_to=msg)


def quantisation_error(settings, weights: list[float], max_weight: float) -> float:
    """The largest error per value of SecAgg+'s average of clients of ``weights``: each client's weighted value is
    stochastically rounded to a step of ``2 * clipping_range / quantization_range``, the sum of those errors is
    divided by the total (quantised) weight ratio."""
    step = 2 * settings.secagg_clipping_range / settings.secagg_quantization_range
    ratio = sum(round(w / max_weight * settings.secagg_quantization_range) for w in weights)
    return len(weights) * step * settings.secagg_quantization_range / ratio


@dataclass
class _Node:
    """What SecAgg+'s workflow needs of a legacy ``ClientProxy``: its node id."""

    node_id: int


class _Collector:
    """The legacy strategy the workflow calls: ``configure_fit`` names the nodes the Message API strategy chose
    (their messages are put in the workflow's state directly), ``aggregate_fit`` keeps the unmasked aggregate."""

    def __init__(self, nodes: list[int]):
        self.nodes, self.results, self.failures = nodes, [], []

    def configure_fit(self, server_round, parameters, client_manager):
        from flwr.common import FitIns

        return [(_Node(node), FitIns(parameters, {})) for node in self.nodes]

    def aggregate_fit(self, server_round, results, failures):
        self.results, self.failures = results, failures
        return None, {}


class _Counting:
    """A grid that counts the bytes of the masked vectors the clients upload (what a secure round receives)."""

    def __init__(self, grid):
        self.grid, self.received = grid, 0

    def send_and_receive(self, messages, *, timeout=None):
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            if not reply.has_error():
                found = reply.content.config_records.get(RECORD_KEY_CONFIGS, {})
                self.received += sum(len(b) for b in found.get(Key.MASKED_PARAMETERS, []))
        return replies

    def __getattr__(self, name):
        return getattr(self.grid, name)


class SecureAggregation:
    """A round's exchange through SecAgg+ (``federated.privacy`` settings; ``max_weight``: the bound on a
    client's weight, ``timeout``: seconds per stage)."""

    def __init__(self, settings, max_weight: float, timeout: float | None = None):
        from flwr.server.workflow import SecAggPlusWorkflow

        shares = settings.secagg_num_shares
        shares = int(shares) if shares > 1 and float(shares).is_integer() else float(shares)
        threshold = float(settings.secagg_reconstruction_threshold)
        self.settings, self.max_weight = settings, float(max_weight)
        self.workflow = SecAggPlusWorkflow(
            shares,
            threshold,
            max_weight=self.max_weight,
            clipping_range=float(settings.secagg_clipping_range),
            quantization_range=int(settings.secagg_quantization_range),
            modulus_range=int(settings.secagg_modulus_range),
            timeout=timeout,
        )

    def __call__(self, server_round: int, messages: list[Message], grid) -> tuple[list[Message], int]:
        """Run SecAgg+ for the train ``messages`` of one round over ``grid``; return one reply per node that the
        strategy sampled (the secure average with the node's metrics, or an error for a node lost on the way) and
        the bytes the clients uploaded."""
        import torch
        from flwr.server.compat.legacy_context import LegacyContext
        from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
        from flwr.server.workflow.constant import Key as WorkflowKey
        from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState

        workflow, counting = self.workflow, _Counting(grid)
        by_node = {m.metadata.dst_node_id: m for m in messages}
        collector = _Collector(list(by_node))
        context = LegacyContext(Context(grid.run.run_id, 0, {}, RecordDict(), {}), strategy=collector)
        context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round})
        context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
        state = WorkflowState()
        completed = workflow.setup_stage(counting, context, state)
        # the Message API strategy's train contents (the workflow would send legacy FitIns), one RecordDict per node:
        # the workflow adds each node's own SecAgg+ config record to it, and a strategy may share one among all
        state.nid_to_fitins = {node: RecordDict(dict(message.content)) for node, message in by_node.items()}
        completed = completed and workflow.share_keys_stage(counting, context, state)
        if completed:
            _keep_the_key_sharers(state)
        for stage in (workflow.collect_masked_vectors_stage, workflow.unmask_stage):
            completed = completed and stage(counting, context, state)
        if not completed or not collector.results:
            reason = (
                f"secure aggregation halted: {len(state.active_node_ids)} of {len(messages)} clients left, "
                f"{state.threshold} needed to reconstruct the masks (federated.privacy.secagg_reconstruction_threshold)"
            )
            lost = [_lost(m, reason) for m in messages]
            return lost, counting.received
        names = list(messages[0].content.array_records["arrays"].keys())
        replies, answered = [], set()
        for node, fitres in collector.results:
            from flwr.common import parameters_to_ndarrays

            average = parameters_to_ndarrays(fitres.parameters)
            arrays = ArrayRecord({name: torch.from_numpy(a.astype("float32")) for name, a in zip(names, average)})
            metrics = MetricRecord({k: v for k, v in fitres.metrics.items() if isinstance(v, int | float)})
            reply = Message(RecordDict({"arrays": arrays, "metrics": metrics}), dst_node_id=0, message_type="train")
            reply.metadata.__dict__["_src_node_id"] = node.node_id
            replies.append(reply)
            answered.add(node.node_id)
        replies += [_lost(m, "lost during secure aggregation") for n, m in by_node.items() if n not in answered]
        return replies, counting.received


def _keep_the_key_sharers(state) -> None:
    """Make the clients that shared their keys the protocol's set: those masks are in the sum, and the unmask
    stage recovers the ones of them that drop out later. flwr 1.32.1's workflow keeps every sampled client
    instead, so a client lost before sharing its keys (it has no shares to recover, no mask to remove) halts the
    round ("Not enough shares")."""
    survivors = set(state.active_node_ids)
    state.sampled_node_ids = survivors
    state.nid_to_neighbours = {
        node: neighbours & survivors for node, neighbours in state.nid_to_neighbours.items() if node in survivors
    }


def _lost(message: Message, reason: str) -> Message:
    """An error reply from the node ``message`` went to."""
    sent = Message(RecordDict(), dst_node_id=message.metadata.dst_node_id, message_type="train")
    sent.metadata.__dict__["_src_node_id"] = 0
    return Message(Error(NODE_FAILED, reason), reply_to=sent)
