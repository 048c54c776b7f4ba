"""`python -m schemas` rewrites the exported JSON Schema files from the models."""

from schemas import write_schemas

for path in write_schemas():
    print(path)
