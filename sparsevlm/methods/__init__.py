"""Every pruning method; importing this package registers them all (sparsevlm.registry), in this order."""

# isort: skip_file
from sparsevlm.methods import dense  # noqa: F401
from sparsevlm.methods import sparsevlm  # noqa: F401
from sparsevlm.methods import baselines  # noqa: F401
from sparsevlm.methods import divprune  # noqa: F401
from sparsevlm.methods import pooling  # noqa: F401
from sparsevlm.methods import pdrop  # noqa: F401
from sparsevlm.methods import dart  # noqa: F401
from sparsevlm.methods import visionzip  # noqa: F401
from sparsevlm.methods import vispruner  # noqa: F401
from sparsevlm.methods import cdpruner  # noqa: F401
from sparsevlm.methods import tome  # noqa: F401
