"""Kept for existing scripts: `python tools/convert_timm.py ARGS` is `python -m ich_keras.convert ARGS`."""
if __name__ == "__main__":
    from ich_keras import cli
    from ich_keras.convert.__main__ import main

    cli.run(main)
