"""The deploy config of a DO-Conv config: the same network with plain convs and stock modules only,
which stock mmdet/mmseg build without doconv_mm installed."""
import copy

from mmengine.config import Config

from .config_tree import config_dicts

# plugin module types -> the stock types they stand in for (same parameters once folded)
STOCK_TYPES = {'ConvCfgRPNHead': 'RPNHead'}


def deploy_config(cfg: Config) -> Config:
    """``cfg`` with every ``conv_cfg=dict(type='DOConv', ...)`` removed (plain convs), plugin module
    types replaced by their stock types, and no ``custom_imports``."""
    cfg_dict = copy.deepcopy(cfg.to_dict())
    cfg_dict.pop('custom_imports', None)
    for node in config_dicts(cfg_dict):
        if isinstance(node.get('conv_cfg'), dict) and node['conv_cfg'].get('type') == 'DOConv':
            del node['conv_cfg']
        if node.get('type') in STOCK_TYPES:
            node['type'] = STOCK_TYPES[node['type']]
    return Config(cfg_dict)
