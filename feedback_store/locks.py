"""An exclusive lock on an open file, released by the OS if the process dies: fcntl on
Unix, msvcrt on Windows. (The nightly job's lock in align.locks uses these too.)"""

def lock_file(handle, blocking: bool) -> bool:
    """An exclusive lock on an open file (fcntl; msvcrt on Windows). False if taken."""
    try:
        import fcntl
    except ImportError:                      # Windows
        import msvcrt
        handle.seek(0)
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK if blocking else msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def unlock_file(handle) -> None:
    try:
        import fcntl
    except ImportError:
        import msvcrt
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        return
    fcntl.flock(handle, fcntl.LOCK_UN)
