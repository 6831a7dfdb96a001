"""A private Kubernetes node for tiergate's tests: containerd 1.6's CRI plugin and a CRI v1 client.

``CriNode(dir, rootfs_tar)`` confines everything to ``dir``:

- containerd (Debian's) with its own config (version 2), root, state, gRPC and
  ttrpc sockets, ``restrict_oom_score_adj = true`` (root here lacks
  CAP_SYS_RESOURCE: without it every sandbox, runc's too, fails), the stream
  server on a random loopback port, pod network namespaces under its state dir;
- CNI from Debian's containernetworking-plugins: a ``bridge`` + ``host-local``
  network whose bridge lives in a network namespace the node makes (containerd
  runs inside it, via ``nsenter --net``), addresses from 10.214.x.0/24 that exist
  only there, IPAM state under ``dir``; the CNI result cache (libcni writes it
  to /var/lib/cni) is removed by name at stop;
- images without a registry: ``image_archive`` writes a docker-archive tar (a
  busybox layer, a config with the given labels) and ``import_image`` loads it
  with ``ctr -n k8s.io images import``; a pause image of the same kind is the
  plugin's ``sandbox_image``;
- a runtime.v1 client (grpcio), from ``runtime_v1.proto`` beside this file: the
  subset the tests use, with cri-api's public field numbers, compiled at start
  with grpc_tools into ``dir``.

``write_config()`` writes containerd's config (a ``runc`` handler only) before
``start()``, so a test can register tiergate's handler in it with ``tiergate
install --engine containerd --config``. ``stop()`` removes the pods, stops
containerd and its shims by pid, deletes the namespace, cgroups and ``dir``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
import uuid
from pathlib import Path
from collections.abc import Mapping, Sequence

import harness
from harness import run_cmd, stop_pid, toml_dumps, wait_until

HERE = Path(__file__).resolve().parent
PROTO = HERE / "runtime_v1.proto"
CNI_BIN = "/usr/lib/cni"
CNI_CACHE = Path("/var/lib/cni")
IP = "/usr/sbin/ip"
NSENTER = "/usr/bin/nsenter"  # not `ip netns exec`: it remounts /sys, hiding the cgroup mounts from runc
PAUSE = "localhost/tiergate-cri-pause:1"
CRI = "io.containerd.grpc.v1.cri"


def image_archive(path: Path, rootfs_tar: Path, ref: str, labels: Mapping[str, str] | None = None,
                  cmd: Sequence[str] = ("/bin/sleep", "3600"), expose: Sequence[str] = ()) -> str:
    """A docker-archive tar (what `podman save` writes) of one layer; returns the image id (config digest)."""
    layer = Path(rootfs_tar).read_bytes()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": list(cmd), "Labels": dict(labels or {}),
                   "ExposedPorts": {p: {} for p in expose}},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }, sort_keys=True).encode()
    config_hex = hashlib.sha256(config).hexdigest()
    manifest = json.dumps([{"Config": f"{config_hex}.json", "RepoTags": [ref],
                            "Layers": [f"{diff_id[7:]}/layer.tar"]}]).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in ((f"{config_hex}.json", config), (f"{diff_id[7:]}/layer.tar", layer),
                           ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return config_hex


def compile_client(out: Path):
    """(runtime_v1_pb2, runtime_v1_pb2_grpc) compiled from the proto into out."""
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    rc = protoc.main(["protoc", f"-I{HERE}", f"--python_out={out}", f"--grpc_python_out={out}", str(PROTO)])
    if rc != 0:
        raise RuntimeError(f"protoc failed ({rc}) on {PROTO}")
    sys.path.insert(0, str(out))
    import runtime_v1_pb2
    import runtime_v1_pb2_grpc

    return runtime_v1_pb2, runtime_v1_pb2_grpc


class CriNode:
    """A private containerd with its CRI plugin, in a network namespace of its own."""

    def __init__(self, dir: Path, rootfs_tar: Path, *, timeout: float = 60.0):
        harness.require_root()
        self.containerd = harness.require_binary("containerd")
        self.ctr = harness.require_binary("ctr")
        harness.require_binary("containerd-shim-runc-v2")
        if not os.access(f"{CNI_BIN}/bridge", os.X_OK):
            harness._unavailable(f"{CNI_BIN}/bridge is missing (apt-get install containernetworking-plugins)")
        self.dir = Path(dir)
        self.rootfs_tar = Path(rootfs_tar)
        self.timeout = timeout
        tag = f"{os.getpid() % 100000}{uuid.uuid4().hex[:4]}"
        self.netns = f"tgcri{tag}"
        self.net_name = f"tgcri-{tag}"
        self.subnet = f"10.214.{os.getpid() % 250}.0/24"
        self.cgroup_parent = f"/tiergate-it-{os.getpid()}-{uuid.uuid4().hex[:6]}-cri"
        self.config = self.dir / "containerd.toml"
        self.sock = self.dir / "containerd.sock"
        self.root, self.state = self.dir / "root", self.dir / "state"
        self.pods: list[str] = []
        self.proc = None
        self._cache_existed = CNI_CACHE.exists()
        self.pb = self.rt = self.img = None

    # -- config and daemon --------------------------------------------------
    def write_config(self) -> Path:
        for p in (self.dir, self.dir / "net.d", self.dir / "ipam", self.dir / "opt"):
            p.mkdir(parents=True, exist_ok=True)
        self.config.write_text(toml_dumps({
            "version": 2,
            "root": str(self.root),
            "state": str(self.state),
            "grpc": {"address": str(self.sock)},
            "ttrpc": {"address": str(self.dir / "containerd.ttrpc.sock")},
            "plugins": {
                "io.containerd.internal.v1.opt": {"path": str(self.dir / "opt")},
                CRI: {
                    "sandbox_image": PAUSE,
                    "restrict_oom_score_adj": True,
                    "stream_server_address": "127.0.0.1",
                    "stream_server_port": "0",
                    "netns_mounts_under_state_dir": True,
                    "enable_selinux": False,
                    "containerd": {
                        "default_runtime_name": "runc",
                        # runc's state under dir too (its default is /run/containerd/runc); the
                        # tiergate handler copies these options, Root included
                        "runtimes": {"runc": {"runtime_type": "io.containerd.runc.v2",
                                              "options": {"SystemdCgroup": False, "Root": str(self.dir / "runc")}}},
                    },
                    "cni": {"bin_dir": CNI_BIN, "conf_dir": str(self.dir / "net.d"), "max_conf_num": 1},
                },
            },
        }))
        (self.dir / "net.d" / "10-tiergate.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0", "name": self.net_name,
            "plugins": [{"type": "bridge", "bridge": "tgcri0", "isGateway": True, "ipMasq": False,
                         "ipam": {"type": "host-local", "dataDir": str(self.dir / "ipam"),
                                  "ranges": [[{"subnet": self.subnet}]]}},
                        {"type": "loopback"}],
        }))
        return self.config

    def start(self) -> CriNode:
        if not self.config.exists():
            self.write_config()
        run_cmd([IP, "netns", "add", self.netns], check=True, timeout=20)
        run_cmd([IP, "-n", self.netns, "link", "set", "lo", "up"], check=True, timeout=20)
        log = open(self.dir / "containerd.log", "ab")
        try:
            self.proc = harness.subprocess.Popen(
                [NSENTER, f"--net=/run/netns/{self.netns}", self.containerd, "--config", str(self.config)],
                stdin=harness.subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.dir)})
        finally:
            log.close()
        import grpc

        self.pb, stubs = compile_client(self.dir / "gen")
        self.channel = grpc.insecure_channel(f"unix://{self.sock}")
        self.rt = stubs.RuntimeServiceStub(self.channel)
        self.img = stubs.ImageServiceStub(self.channel)

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                return self.rt.Version(self.pb.VersionRequest(version="v1"), timeout=2).runtime_api_version
            except grpc.RpcError:
                return False

        wait_until(ready, timeout=30, interval=0.1, what="containerd's CRI socket")
        self.import_image(PAUSE, cmd=("/bin/sleep", "2147483647"))
        return self

    def log_tail(self, lines: int = 40) -> str:
        path = self.dir / "containerd.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def ctr_cmd(self, *args: str, timeout: float | None = None):
        return run_cmd([self.ctr, "--address", str(self.sock), "--namespace", "k8s.io", *args],
                       timeout=timeout or self.timeout)

    def import_image(self, ref: str, labels: Mapping[str, str] | None = None,
                     cmd: Sequence[str] = ("/bin/sleep", "3600"), expose: Sequence[str] = ()) -> str:
        """Import an image built from the busybox rootfs; returns its id (sha256:<config digest>)."""
        tar = self.dir / f"img-{uuid.uuid4().hex[:8]}.tar"
        image_id = image_archive(tar, self.rootfs_tar, ref, labels, cmd, expose)
        proc = self.ctr_cmd("images", "import", "--no-unpack=false", str(tar), timeout=120)
        if proc.returncode != 0:  # older ctr: no --no-unpack flag
            proc = self.ctr_cmd("images", "import", str(tar), timeout=120)
        tar.unlink()
        if proc.returncode != 0:
            raise harness.CommandFailed(proc)
        return "sha256:" + image_id

    def image_id(self, ref: str) -> str:
        """What kubelet sends in ImageSpec.image: the id ImageStatus reports for a reference."""
        return self.img.ImageStatus(self.pb.ImageStatusRequest(image=self.pb.ImageSpec(image=ref)),
                                    timeout=self.timeout).image.id

    # -- pods -----------------------------------------------------------------
    def sandbox_config(self, name: str, *, namespace: str = "default", annotations: Mapping[str, str] | None = None,
                       host_network: bool = False, host_pid: bool = False, host_ipc: bool = False,
                       privileged: bool = False, seccomp_default: bool = False):
        """seccomp_default: the pod's `seccompProfile: RuntimeDefault` at pod level, which kubelet
        also hands the sandbox (pause) container."""
        pb = self.pb
        uid = uuid.uuid4().hex
        mode = lambda host: pb.NODE if host else pb.POD  # noqa: E731
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=uid, namespace=namespace),
            hostname="" if host_network else name, log_directory=str(self.dir / "logs" / uid),
            annotations=dict(annotations or {}),
            linux=pb.LinuxPodSandboxConfig(
                cgroup_parent=f"{self.cgroup_parent}/{uid}",
                security_context=pb.LinuxSandboxSecurityContext(
                    privileged=privileged,
                    namespace_options=pb.NamespaceOption(network=mode(host_network), pid=mode(host_pid),
                                                         ipc=mode(host_ipc)))))
        if seccomp_default:
            config.linux.security_context.seccomp.SetInParent()  # RuntimeDefault is the enum's zero
            config.linux.security_context.seccomp.profile_type = pb.SecurityProfile.RuntimeDefault
        return config

    def run_pod(self, config, handler: str = "runc") -> str:
        (self.dir / "logs" / config.metadata.uid).mkdir(parents=True, exist_ok=True)
        sid = self.rt.RunPodSandbox(self.pb.RunPodSandboxRequest(config=config, runtime_handler=handler),
                                    timeout=self.timeout).pod_sandbox_id
        self.pods.append(sid)
        return sid

    def create(self, sid: str, sandbox_config, image: str, cmd: Sequence[str] = ("/bin/sleep", "3600"), *,
               name: str = "app", privileged: bool = False, add_caps: Sequence[str] = (),
               mounts: Sequence[tuple[str, str]] = (), host_pid: bool = False,
               annotations: Mapping[str, str] | None = None, seccomp_default: bool = False) -> str:
        """seccomp_default: the pod spec's `seccompProfile: RuntimeDefault` (containerd's default profile)."""
        pb = self.pb
        sc = pb.LinuxContainerSecurityContext(
            privileged=privileged, capabilities=pb.Capability(add_capabilities=list(add_caps)),
            namespace_options=pb.NamespaceOption(pid=pb.NODE if host_pid else pb.CONTAINER))
        if seccomp_default:
            sc.seccomp.SetInParent()  # RuntimeDefault is the enum's zero: only presence says it
            sc.seccomp.profile_type = pb.SecurityProfile.RuntimeDefault
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=image),
            command=list(cmd), log_path=f"{name}.log", annotations=dict(annotations or {}),
            mounts=[pb.Mount(host_path=h, container_path=c) for h, c in mounts],
            linux=pb.LinuxContainerConfig(security_context=sc))
        return self.rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sid, config=config,
                                                                 sandbox_config=sandbox_config),
                                       timeout=self.timeout).container_id

    def start_container(self, cid: str) -> None:
        self.rt.StartContainer(self.pb.StartContainerRequest(container_id=cid), timeout=self.timeout)

    def exec_sync(self, cid: str, *cmd: str, timeout: int = 20):
        return self.rt.ExecSync(self.pb.ExecSyncRequest(container_id=cid, cmd=list(cmd), timeout=timeout),
                                timeout=timeout + 10)

    def remove_pod(self, sid: str) -> None:
        pb = self.pb
        self.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=self.timeout)
        self.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=self.timeout)
        if sid in self.pods:
            self.pods.remove(sid)

    # -- teardown -------------------------------------------------------------
    def stop(self) -> None:
        try:
            for sid in list(self.pods):
                try:
                    self.remove_pod(sid)
                except Exception:
                    pass
            if self.proc is not None and self.proc.poll() is None:
                stop_pid(self.proc.pid, timeout=20)
                self.proc.wait(timeout=5)
            for pid in harness.containerd_shims(self.sock):
                stop_pid(pid, timeout=5)
        finally:
            run_cmd([IP, "netns", "del", self.netns], timeout=20)
            harness.remove_tree(self.dir)
            harness.remove_cgroup(self.cgroup_parent)
            self._remove_cni_cache()

    def _remove_cni_cache(self) -> None:
        """libcni's result cache (/var/lib/cni/results/<net>-<id>-<if>): ours by network name."""
        results = CNI_CACHE / "results"
        if results.is_dir():
            for f in results.glob(f"{self.net_name}-*"):
                f.unlink(missing_ok=True)
        if not self._cache_existed:
            for d in (results, CNI_CACHE):
                try:
                    d.rmdir()
                except OSError:
                    pass


def wait_exit(node: CriNode, cid: str, timeout: float = 30.0):
    """The ContainerStatus of a container once it has exited."""
    def done():
        st = node.rt.ContainerStatus(node.pb.ContainerStatusRequest(container_id=cid), timeout=10).status
        return st if st.state == node.pb.CONTAINER_EXITED else None

    return wait_until(done, timeout=timeout, interval=0.1, what=f"container {cid[:12]} to exit")


def container_log(node: CriNode, config, name: str = "app") -> str:
    """The container's stdout lines (CRI log format: time stream tag text)."""
    path = Path(config.log_directory) / f"{name}.log"
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join(line.split(" ", 3)[3] if line.count(" ") >= 3 else line for line in lines)


