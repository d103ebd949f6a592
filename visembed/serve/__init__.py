"""The HTTP service and web page over an index: `create_app`, `run_server`."""


def create_app(*args, **kwargs):
    from visembed.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)


def run_server(index_dir, host: str = "127.0.0.1", port: int = 8000, **kwargs) -> None:
    from visembed.serve.app import run_server as _run_server

    _run_server(index_dir, host, port, **kwargs)


__all__ = ["create_app", "run_server"]
