"""float64 gradcheck of the pool ops on the torch backend."""
from torch.autograd import gradcheck

import stquery as stq

from ..helpers import leaf as _leaf
from ..helpers import strided


def test_multiscale_pool():
    assert gradcheck(lambda y: stq.multiscale_pool(y, (1, 2, 4), backend="torch"), (_leaf(strided((2, 7, 3))),))


def test_st_pool():
    assert gradcheck(lambda x: stq.st_pool(x, backend="torch"), (_leaf(strided((2, 3, 4, 5))),))
