# The transfer kind's presets (study, study-quick) are registered by granularity.experiments, the
# layer above sweeps; the CLI imports it before reading a sweep file, and so do these tests.
import granularity.experiments  # noqa: F401
