"""The kit inside other tools' harnesses: plugins that another program loads (``lmms_eval``: lmms-eval's model entry
points and a task folder). Harness-level, like ``prunevid.harness``: the library and the kit's own programs never
import this package; the other tool does, by the names it registers (``pyproject.toml``'s entry points)."""
