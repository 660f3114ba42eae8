// Storage dtypes shared by the launchers (.cu) and the bindings (.cpp); plain C++.
#pragma once

namespace stq {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

}  // namespace stq
