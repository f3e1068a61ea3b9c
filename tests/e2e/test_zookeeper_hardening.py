"""zk:// hardening against the real ZooKeeper the suite starts: clean close on cancellation,
digest ACLs on presence nodes, and a deleted registration put back at once (issue 10, rows 7, 11)."""

from __future__ import annotations

import base64
import hashlib
import time

import pytest
import trio

from pulse.plugins.zookeeper import connect
from tests.ci import IN_CI
from tests.e2e.test_zookeeper_kazoo import KazooProbe, probes  # noqa: F401 (fixture)
from tests.e2e.test_zookeeper_presence import Recorder
from tests.zk_harness import ZooKeeperServer

if IN_CI:
    import kazoo.exceptions as kazoo_exceptions  # CI installs kazoo: missing is an error
else:
    kazoo_exceptions = pytest.importorskip("kazoo.exceptions")

pytestmark = [pytest.mark.zookeeper, pytest.mark.e2e]


@pytest.fixture
def chroot() -> str:
    """A fresh path prefix per test on the shared server."""
    return f"/harden-{time.monotonic_ns()}"


async def test_cancelling_the_scope_closes_the_session_at_once(
    zookeeper_server: ZooKeeperServer, chroot: str,
) -> None:
    """Cancel the scope around connect(): watchers see the member leave within 1 s (closeSession
    reached the server), and leaving the scope takes well under 1 s."""
    url = zookeeper_server.url + chroot
    async with connect(url, session_timeout=4.0) as watcher, trio.open_nursery() as nursery:
        recorder = Recorder()
        await watcher.register("/presence/w", b"")
        nursery.start_soon(recorder.consume, watcher.watch("/presence"))
        with trio.CancelScope() as scope:
            async with connect(url, session_timeout=4.0) as member:
                await member.register("/presence/m", b"")
                await recorder.wait_for("online", "m")
                cancelled_at = trio.current_time()
                scope.cancel()
                await trio.sleep_forever()
        left_after = trio.current_time() - cancelled_at
        seen = await recorder.wait_for("offline", "m", timeout=3.0)
        assert left_after < 1.0, left_after
        assert seen - cancelled_at < 1.0, seen - cancelled_at
        nursery.cancel_scope.cancel()


async def test_presence_node_carries_digest_acl(
    zookeeper_server: ZooKeeperServer, chroot: str, probes: list[KazooProbe],  # noqa: F811
) -> None:
    """With credentials, the node's ACL is the agent's digest (all) plus world read: an
    unauthenticated kazoo reads it but cannot change its data."""
    url = zookeeper_server.url + chroot
    probe = KazooProbe(f"127.0.0.1:{zookeeper_server.client_port}", timeout=2.0)
    probes.append(probe)
    await probe.start()
    async with connect(url, session_timeout=4.0, digest=("agent-1", "s3cret")) as member:
        await member.register("/presence/agent-1", b"mine")
        acls, _stat = await probe.call(probe.client.get_acls, f"{chroot}/presence/agent-1")
        expected = base64.b64encode(hashlib.sha1(b"agent-1:s3cret").digest()).decode()
        entries = {(acl.id.scheme, acl.id.id, acl.perms) for acl in acls}
        # ZooKeeper masks the digest for a reader without ADMIN on the node ("user:x")
        assert entries in ({("digest", f"agent-1:{expected}", 31), ("world", "anyone", 1)},
                           {("digest", "agent-1:x", 31), ("world", "anyone", 1)})
        data, _ = await probe.call(probe.client.get, f"{chroot}/presence/agent-1")
        assert data == b"mine"
        with pytest.raises(kazoo_exceptions.NoAuthError):
            await probe.call(probe.client.set, f"{chroot}/presence/agent-1", b"vandal")
        # the owner itself can still replace its data
        await member.register("/presence/agent-1", b"updated")
        assert await member.get("/presence/agent-1") == b"updated"
        # a client holding the same digest credentials has the rights (the digest is right)
        admin = KazooProbe(f"127.0.0.1:{zookeeper_server.client_port}", timeout=2.0)
        probes.append(admin)
        await admin.start()
        await admin.call(admin.client.add_auth, "digest", "agent-1:s3cret")
        await admin.call(admin.client.set, f"{chroot}/presence/agent-1", b"by admin")
        assert await member.get("/presence/agent-1") == b"by admin"


async def test_deleted_registration_is_put_back_at_once(
    zookeeper_server: ZooKeeperServer, chroot: str, probes: list[KazooProbe],  # noqa: F811
) -> None:
    """kazoo deletes a live member's node: the member re-creates it within 1 s, same data and
    owner; watchers see it back."""
    url = zookeeper_server.url + chroot
    probe = KazooProbe(f"127.0.0.1:{zookeeper_server.client_port}", timeout=2.0)
    probes.append(probe)
    await probe.start()
    async with (connect(url, session_timeout=4.0) as member,
                connect(url, session_timeout=4.0) as watcher,
                trio.open_nursery() as nursery):
        await member.register("/presence/m", b"data")
        recorder = Recorder()
        nursery.start_soon(recorder.consume, watcher.watch("/presence"))
        await recorder.wait_for("online", "m")
        deleted_at = trio.current_time()
        await probe.call(probe.client.delete, f"{chroot}/presence/m")
        with trio.fail_after(1.0):
            while True:
                stat = await member.exists("/presence/m")
                if stat is not None:
                    break
                await trio.sleep(0.02)
        assert trio.current_time() - deleted_at < 1.0
        assert stat.ephemeral_owner == member.session_id
        assert await member.get("/presence/m") == b"data"
        await member.unregister("/presence/m")  # an unregistered key is not put back
        await trio.sleep(0.5)
        assert await member.exists("/presence/m") is None
        nursery.cancel_scope.cancel()
