"""What the suites share, so that no test imports another suite's module.

- `process`: the installed agent and interpreter, free ports, waiting, killing a process group, and
  the world-readable copy of the helper scripts that run as another uid.
- `netns`: network namespaces, the "pod" and "remote" pair, clients run as any uid, counting shims.
- `agent`: the real `pilot-agent proxy sidecar` started in a namespace, curl inside it, and the
  "nothing is left behind" checks.
- `ads`: the test ADS control plane (in-process, or `python -m tests.support.ads` in a namespace).
- `goldens`: compare with, or refresh, golden files.
"""
