"""The test tree mirrors the package tree: a module's tests are found under the same name.

    tests/proxy/       gateway/proxy      calls through the real proxy: injection, upstream, regressions
    tests/pipeline/    gateway/pipeline   egress, validation, DLP steps, breaker
    tests/policy/      gateway/policy     engine, expressions, approvals, quotas, reload, and through the proxy
    tests/identity/    gateway/identity   agent tokens at CONNECT and inside the tunnel, revocation
    tests/audit/       gateway/audit      the hash-chained, signed log
    tests/api/         gateway/api        the admin API, sandbox runs and tool registration over HTTP
    tests/cli/         gateway/cli        the command line contract
    tests/connectors/  connectors/        codecs, field paths, connector references
    tests/dlp/         dlp/               the PII library on its own
    tests/sandbox/     sandbox/           the WASM sandbox on its own
    tests/chaos/       (all of it)        faults injected into real processes, and the end-of-suite invariants
    tests/test_*.py    gateway/*.py       configuration, and the README's refusal table against gateway/errors.py

Shared parts are plain modules, never a conftest: `fakes` (PKI, fake vendor, shared values),
`processes` (the one gateway launcher and the one redis-server launcher), `clients` (how agents and
attackers speak to the gateway), `python_tools` (the componentize-py build).
"""
