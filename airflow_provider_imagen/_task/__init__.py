"""
One try of an Imagen task: what the operators, the trigger's resumption and ``@task.imagen`` do around the hook.

- :mod:`.job`: reuse what earlier tries paid for, generate what is missing, store it, account for it.
- :mod:`.durable`: the records of what a task instance paid for, kept across its tries.
- :mod:`.storage`: download and store an image atomically, and keep bytes until they are stored.
- :mod:`.lineage`: the stored images as OpenLineage output datasets.
"""
