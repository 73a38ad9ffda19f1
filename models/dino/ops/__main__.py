"""`python -m models.dino.ops`: print which msda backend runs on cpu / cuda and why (builds it if needed)."""
import json
import logging

from .backend import backend_info

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(json.dumps(backend_info(), indent=2))
