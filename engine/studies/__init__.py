"""Studies over many runs: λ sweeps (`sweep`), the layer explorer (`explore`) and comparing runs
(`compare`). They submit through `engine.jobs` and read through `engine.tracking`; no Streamlit."""
