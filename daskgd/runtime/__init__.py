"""Runtime: what runs on the workers.

handle.py      Runtime: the client's handle on one run's residents (evaluate, call)
plugin.py      RuntimePlugin: the WorkerPlugin whose handlers host the residents
resident.py    Resident: a worker's chunks, the model, state; send / recv / allreduce
messaging.py   the mailbox, the meter, the errors that reach the client
measures.py    Measures and Results: what a request returns besides its value
codecs.py      codecs on the wire; emulation.py emulated network, stragglers, failures;
tuning.py      shortening distributed's batching for the mapreduce graph path
"""
