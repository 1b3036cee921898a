"""Adds the config directories that tessera plugins return from ``tessera_config_search_path`` to Hydra's."""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class TesseraSearchPathPlugin(SearchPathPlugin):
    """Appends every plugin's config directories after tessera's own."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from tessera.core.plugins import get_plugins

        for entries in get_plugins().hook.tessera_config_search_path():
            for entry in entries or []:
                search_path.append(provider="tessera-plugin", path=entry)
