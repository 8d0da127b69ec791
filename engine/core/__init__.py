"""The style-transfer engine proper, torch only (no MLflow, no Streamlit): config, images, the VGG19
features, the costs, the optimisers, AdaIN, devices and memory, the run plan, and the transfer loop."""
