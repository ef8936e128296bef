"""Every piece of Flower that is not its public API and that fedhar's deployment uses, in one place, checked.

fedhar runs Flower's SuperLink / SuperNode itself and executes the apps in its own processes
(``fedhar.deploy.runtime``, ``fedhar.deploy.supernode``); that needs Flower's protobuf messages, serde, Control
and Runtime API clients and SuperNode modules, which change between Flower releases without notice. They were
written against the versions in ``SUPPORTED_FLOWER_VERSIONS`` (pyproject.toml pins ``flwr[simulation]==1.42.0``).
Importing this module with another Flower installed fails at once with ``FlowerVersionError`` (found version,
supported versions, the fix), instead of an ``AttributeError`` or a hung task in the middle of a run.

Public Flower (``flwr.app``, ``flwr.clientapp``, ``flwr.serverapp``, ``flwr.simulation``) is imported directly
where it is used. Other modules import the internals from here, and only here is a Flower upgrade to be checked.
"""

from __future__ import annotations

import importlib
from importlib import metadata

from fedhar.errors import FedharError

#: Flower releases these internals were written and tested against (pyproject.toml pins the first)
SUPPORTED_FLOWER_VERSIONS = ("1.42.0",)


class FlowerVersionError(FedharError):
    """The installed Flower is not one fedhar's deployment runtime was written against."""


def installed_flower_version() -> str | None:
    try:
        return metadata.version("flwr")
    except metadata.PackageNotFoundError:
        return None


def check_flower_version(found: str | None = None) -> str:
    """``found`` (default: the installed Flower's version) if it is supported; else ``FlowerVersionError``."""
    found = found if found is not None else installed_flower_version()
    if found not in SUPPORTED_FLOWER_VERSIONS:
        pin = SUPPORTED_FLOWER_VERSIONS[0]
        raise FlowerVersionError(
            f"fedhar's deployment runtime (fedhar server / fedhar client) uses Flower internals written for flwr "
            f"{' or '.join(SUPPORTED_FLOWER_VERSIONS)}, but this environment has "
            f"{'no flwr' if found is None else f'flwr {found}'}; install the pinned version: "
            f"pip install 'flwr[simulation]=={pin}' (what fedhar's pyproject.toml asks for)"
        )
    return found


check_flower_version()  # before the imports below: on another Flower they may not exist, or mean something else

# ruff: noqa: E402 - every import below must come after the version check
# ---- SuperNode: fedhar starts Flower's own, with a shorter heartbeat (fedhar.deploy.supernode) --------------
import flwr.supercore.logger  # noqa: F401 - importing it configures the "flwr" logger (fedhar then quiets it)
from flwr.supercore import heartbeat as supercore_heartbeat  # HEARTBEAT_DEFAULT_INTERVAL: the sender's schedule
from flwr.supernode import fleet_http_connection  # HEARTBEAT_DEFAULT_INTERVAL: announced to the SuperLink
# the module (the package's attribute of that name is the function): `flower_supernode` is looked up at call time
supernode_cli = importlib.import_module("flwr.supernode.cli.flower_supernode")

# ---- the Control API: register device keys, start and stop runs --------------------------------------------
from flwr.cli.build import build_fab_from_files
from flwr.common.config import parse_config_args  # Flower's `--node-config` syntax
from flwr.common.serde import fab_to_proto, user_config_to_proto
from flwr.proto.control_pb2 import ListNodesRequest, RegisterNodeRequest, StartRunRequest, StopRunRequest
from flwr.supercore.control import ControlHttpClient
from flwr.supercore.fab import Fab
from flwr.supercore.primitives.asymmetric import public_key_to_bytes

# ---- the Runtime API: claim a task, pull its input, heartbeat, push its output ----------------------------
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.serde import context_from_proto, context_to_proto, fab_from_proto, run_from_proto
from flwr.proto.node_pb2 import Node
from flwr.proto.runtime_pb2 import (
    AcquireTaskRequest,
    PullAppMessagesRequest,
    PullTaskInputRequest,
    PushTaskOutputRequest,
    SendTaskHeartbeatRequest,
)
from flwr.superlink.grid import HttpGrid  # the ServerApp's Grid over the SuperLink's Runtime API
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender
from flwr.supercore.inflatable.inflatable_protobuf_utils import (
    make_confirm_message_received_fn_protobuf,
    make_pull_object_fn_protobuf,
)
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
    SuperExecAuthHttpInterceptor,
)
from flwr.supercore.retry import RetryInvoker, exponential
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime.run_clientapp import push_message

__all__ = [
    "SUPPORTED_FLOWER_VERSIONS", "FlowerVersionError", "check_flower_version", "installed_flower_version",
    "supercore_heartbeat", "fleet_http_connection", "supernode_cli",
    "build_fab_from_files", "parse_config_args", "fab_to_proto", "user_config_to_proto", "ListNodesRequest",
    "RegisterNodeRequest", "StartRunRequest", "StopRunRequest", "ControlHttpClient", "Fab", "public_key_to_bytes",
    "ErrorCode", "SubStatus", "context_from_proto", "context_to_proto", "fab_from_proto", "run_from_proto", "Node",
    "AcquireTaskRequest", "PullAppMessagesRequest", "PullTaskInputRequest", "PushTaskOutputRequest",
    "SendTaskHeartbeatRequest", "HttpGrid", "TaskType", "HeartbeatSender", "make_confirm_message_received_fn_protobuf",
    "make_pull_object_fn_protobuf", "pull_and_inflate_object_from_tree", "RuntimeTokenHttpInterceptor",
    "RuntimeVersionHttpInterceptor", "SuperExecAuthHttpInterceptor", "RetryInvoker", "exponential",
    "RuntimeHttpClient", "TaskIdentity", "push_message", "task_grid",
]  # fmt: skip


def task_grid(address: str, insecure: bool, root_certificates: bytes | None, token: str,
              retry: RetryInvoker) -> tuple[HttpGrid, RuntimeHttpClient]:  # fmt: skip
    """A claimed ServerApp task's Grid over the SuperLink's Runtime API, retrying with ``retry``, and the
    authenticated Runtime API client it owns. Flower keeps both as private attributes of ``HttpGrid``: this is
    the one place fedhar touches them (set before the Grid's first use)."""
    grid = HttpGrid(runtime_api_address=address, insecure=insecure, root_certificates=root_certificates, token=token)
    grid._retry_invoker = retry  # noqa: SLF001
    return grid, grid._runtime_client  # noqa: SLF001
