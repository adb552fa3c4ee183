{
  "targets": [
    {
      "target_name": "attnres_native",
      "sources": [
        "native/addon.cc",
        "native/gemm.cc",
        "native/kernels_elementwise.cc",
        "native/kernels_model.cc",
        "native/attention.cc",
        "native/depth_route.cc",
        "native/ddl.cc",
        "native/optim.cc",
        "native/peak.cc",
        "native/decode.cc"
      ],
      "defines": ["NAPI_VERSION=8", "<!@(node native/detect-blas.mjs defines)"],
      "cflags": ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-Wall", "-Wextra", "-Wno-unused-parameter",
                 "<!@(node native/detect-blas.mjs cflags)"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-fexceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "ldflags": ["-fopenmp"],
      "libraries": ["<!@(node native/detect-blas.mjs libs)"]
    }
  ]
}
