"""The OpenMMLab integration (needs mmengine and mmcv): importing it registers ``DOConv2d`` as the
``'DOConv'`` conv type and with mmcv's FLOPs counter, lets mmengine resolve ``mmdet::``/``mmseg::``
configs without ``pkg_resources``, and registers the mmdet adapters where mmdet is installed."""
from ..requirements import available, require

require('mmengine')
require('mmcv')

from . import package_paths, registry  # noqa: E402,F401  (registry: registers on import)

package_paths.install()
if available('mmdet'):
    from . import det  # noqa: F401,E402
