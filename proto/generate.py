"""Regenerate hodei_pb2*.py(i) from hodei.proto: ``python -m hodei.proto.generate``."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent


def main() -> int:
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    code = protoc.main(
        [
            "protoc",
            f"-I{HERE}",
            f"-I{include}",
            f"--python_out={HERE}",
            f"--mypy_out={HERE}",
            f"--grpc_python_out={HERE}",
            str(HERE / "hodei.proto"),
        ]
    )
    if code:
        return int(code)
    # protoc writes absolute imports ("import hodei_pb2"); the modules live in hodei.proto.
    grpc_module = HERE / "hodei_pb2_grpc.py"
    text = grpc_module.read_text()
    text = re.sub(r"^import hodei_pb2 as", "from hodei.proto import hodei_pb2 as", text, flags=re.M)
    grpc_module.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
