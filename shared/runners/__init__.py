"""How a device runs a model: the `Runner` protocol every runtime implements (onnxruntime here,
TVM and vendor SDKs in the agent), and the onnxruntime runner the tuner also uses in-process."""
