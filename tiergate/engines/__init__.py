"""Registering tiergate with engines: one small interface, one module per engine.

ENGINES is the one table of engine names `tiergate install --engine` takes,
each with the module (in this package) that registers tiergate with it.
"""

ENGINES = {
    "podman": "podman",                  # OCI hooks in a hooks.d directory
    "docker": "docker",                  # a runtime in daemon.json
    "containerd": "containerd",          # a CRI runtime handler in config.toml
    "podman-runtime": "podman_runtime",  # the shim as podman's runtime (containers.conf drop-in)
}
RUNTIME_ENGINES = ("docker", "containerd", "podman-runtime")  # those that use the tiergate-runtime shim
