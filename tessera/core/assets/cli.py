"""``tessera assets``: list, fetch, verify the offline assets and print their directories."""

from __future__ import annotations

import argparse

from tessera.core.assets.catalogue import ASSET_NAMES, CATALOGUE, chosen
from tessera.core.assets.fetching import fetch
from tessera.core.assets.store import asset_dir, asset_path, megabytes, problem, read_manifest, verify


def main(argv: list[str]) -> int:
    """The ``tessera assets`` command line; prints its results and returns the exit status.

    ``list`` (the default) shows each asset's name, status, directory and size; ``fetch`` builds missing
    assets (``--force``: rebuild); ``verify`` recomputes hashes and exits with 1 if any asset is not ok;
    ``path`` prints the directory of each named, checked asset.
    """
    summaries = "\n".join(f"  {asset.name:14} {asset.summary}" for asset in CATALOGUE.values())
    parser = argparse.ArgumentParser(
        prog="tessera assets",
        description="Manage the offline assets.",
        epilog=f"assets:\n{summaries}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", nargs="?", default="list", choices=("fetch", "verify", "list", "path"))
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"default: all of {', '.join(ASSET_NAMES)}")
    parser.add_argument("--force", action="store_true", help="fetch: rebuild assets that are already present")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        fetch(args.names, force=args.force)
    elif args.command == "verify":
        results = verify(args.names)
        for name, status in results.items():
            print(f"{name:14} {status}")
        return 0 if all(status == "ok" for status in results.values()) else 1
    elif args.command == "list":
        for name in chosen(args.names):
            status = problem(name, deep=False) or "ok"
            size = megabytes(sum(f["size"] for f in read_manifest(name)["files"].values())) if status == "ok" else "-"
            print(f"{name:14} {status:12} {size:>9}  {asset_dir(name)}")
    else:
        for name in chosen(args.names):
            print(asset_path(name))
    return 0
