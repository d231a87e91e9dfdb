"""chaos: experiments declared to the pipeline, judged from the stored spans."""
