"""``python tests/inject_save_failure.py STEP PROCESS avpretrain-args...``: the ``avpretrain`` command,
with the array writes of checkpoint STEP failing with ENOSPC in the background on process PROCESS
only, as a full local disk would (the other processes write theirs). Used as the launcher's ``AVP``
by the multi-process fault tests."""
import errno
import os
import sys


def main():
    step, process, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    import jax
    from orbax.checkpoint import type_handlers
    from orbax.checkpoint._src.futures import future

    from avpretrain import checkpoint  # registers avpretrain's array handler, which is patched here

    arrays = type_handlers.get_type_handler(jax.Array)
    serialize = arrays.serialize

    async def failing(values, infos, args=None):
        commits = await serialize(values, infos, args)
        if jax.process_index() != process or infos[0].parent_dir.parent.name.split(".")[0] != step:
            return commits

        async def write():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        return [*commits, future.CommitFuture(write())]

    arrays.serialize = failing
    assert checkpoint.Saver  # imported for its registration
    from avpretrain import cli

    sys.exit(cli.main(argv))


if __name__ == "__main__":
    main()
