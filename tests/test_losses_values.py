"""Hand-worked values for every registered loss.

Unless a case says otherwise the pair is
    policy    = [[-1.0, -2.0]]   (pc, pr)
    reference = [[-1.5, -1.5]]   (rc, rr)
so rho_c = pc - rc = 0.5, rho_r = pr - rr = -0.5 and the DPO margin h = rho_c - rho_r = 1.0,
with lengths [[2, 4]]. Handy numbers: log sigma(1) = -0.3132617, log sigma(-1) = -1.3132617,
sigma(1) = 0.7310586, sigma(0.5) = 0.6224593, log sigma(0.5) = -0.4740770, log 2 = 0.6931472.
Each case's docstring is the arithmetic; the expected value is written with `math` so the
test reads like the docstring.
"""

import math

import pytest
import torch

from prefopt.losses import get_loss, list_losses

from helpers_losses import pair

POLICY, REFERENCE, LENGTHS = [[-1.0, -2.0]], [[-1.5, -1.5]], [[2, 4]]


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def case_dpo():
    """-log sigma(beta h) = -log sigma(1 * 1) = log(1 + e^-1) = 0.3132617"""
    return pair(POLICY, REFERENCE), {"beta": 1.0}, [math.log1p(math.exp(-1))]


def case_cdpo():
    """eps = 0.25: -(0.75) log sigma(1) - 0.25 log sigma(-1) = 0.75*0.3132617 + 0.25*1.3132617 = 0.5632617"""
    return pair(POLICY, REFERENCE), {"beta": 1.0, "epsilon": 0.25}, [0.75 * 0.3132617 + 0.25 * 1.3132617]


def case_rdpo():
    """eps = 0.25: [-(0.75) log sigma(1) + 0.25 log sigma(-1)] / (1 - 0.5)
    = (0.75*0.3132617 - 0.25*1.3132617) / 0.5 = (0.2349463 - 0.3283154) / 0.5 = -0.1867383"""
    return pair(POLICY, REFERENCE), {"beta": 1.0, "epsilon": 0.25}, [(0.75 * 0.3132617 - 0.25 * 1.3132617) / 0.5]


def case_rpo():
    """variant sum, eta = 0.5, beta = 1: dpo + 0.5 * 1 * (-pc) = 0.3132617 + 0.5 * 1.0 = 0.8132617"""
    return pair(POLICY, REFERENCE), {"beta": 1.0, "eta": 0.5}, [0.3132617 + 0.5]


def case_rpo_mean():
    """variant mean, eta = 0.5: dpo + 0.5 * (-pc / len_c) = 0.3132617 + 0.5 * 1.0 / 2 = 0.5632617"""
    batch = pair(POLICY, REFERENCE, lengths=LENGTHS)
    return batch, {"beta": 1.0, "eta": 0.5, "variant": "mean"}, [0.3132617 + 0.25]


def case_vpo():
    """offline, no calibration fields, alpha = 0.5, beta = 1: y_cal = chosen, so
    dpo - alpha * beta * (pc - rc) = 0.3132617 - 0.5 * 0.5 = 0.0632617"""
    return pair(POLICY, REFERENCE), {"beta": 1.0, "alpha": 0.5}, [0.3132617 - 0.25]


def case_vpo_online():
    """online, calibration log-probs -3 (policy) and -2 (reference), alpha = 0.5, beta = 1:
    dpo + 0.5 * 1 * (-3 - -2) = 0.3132617 - 0.5 = -0.1867383"""
    batch = pair(POLICY, REFERENCE, calibration_policy=[-3.0], calibration_reference=[-2.0])
    return batch, {"beta": 1.0, "alpha": 0.5, "mode": "online"}, [0.3132617 - 0.5]


def case_inpo():
    """eta = 0.25 (target 1/(2 eta) = 2), ratio = 0.5, previous = [[-1, -3]]:
    h_t = (pc - pr) - 0.5 (rc - rr) - 0.5 (prev_c - prev_r) = 1 - 0.5*0 - 0.5*2 = 0; (0 - 2)^2 = 4"""
    batch = pair(POLICY, REFERENCE, previous=[[-1.0, -3.0]])
    return batch, {"eta": 0.25, "ratio": 0.5}, [4.0]


def case_cdr():
    """scores [[2, 1]], temperature 1: p = sigma(1) = 0.7310586;
    -(p log sigma(1) + (1-p) log sigma(-1)) = 0.7310586*0.3132617 + 0.2689414*1.3132617 = 0.5821985"""
    batch = pair(POLICY, REFERENCE, scores=[[2.0, 1.0]])
    p = sigmoid(1.0)
    return batch, {"beta": 1.0}, [-(p * log_sigmoid(1.0) + (1 - p) * log_sigmoid(-1.0))]


def case_bvpo():
    """alpha = 0.25; empty-trace view has policy = reference = [[-2, -2]] so its margin is 0:
    0.25 * 0.3132617 + 0.75 * log 2 = 0.0783154 + 0.5198604 = 0.5981758"""
    batch = pair(POLICY, REFERENCE, empty_policy=[[-2.0, -2.0]], empty_reference=[[-2.0, -2.0]])
    return batch, {"beta": 1.0, "alpha": 0.25}, [0.25 * 0.3132617 + 0.75 * math.log(2)]


def case_plackett_luce():
    """K = 3, beta = 1, policy [[3, 1, 0]], reference 0, so s = [3, 1, 0]:
    -[(3 - log(e^3 + e^1 + e^0)) + (1 - log(e^1 + e^0)) + (0 - log e^0)]
    = -[(3 - 3.1698640) + (1 - 1.3132617) + 0] = 0.1698640 + 0.3132617 = 0.4831257"""
    batch = pair([[3.0, 1.0, 0.0]], [[0.0, 0.0, 0.0]])
    expected = -((3 - math.log(math.exp(3) + math.exp(1) + 1)) + (1 - math.log(math.exp(1) + 1)))
    return batch, {"beta": 1.0}, [expected]


def case_plackett_luce_masked():
    """Row 2 has its middle column masked, leaving the pair s = [3, 0]: -log sigma(3) = 0.0485874;
    row 1 is the unmasked ranking above, 0.4831257."""
    batch = pair([[3.0, 1.0, 0.0], [3.0, 99.0, 0.0]], [[0.0] * 3] * 2, mask=[[True] * 3, [True, False, True]])
    first = -((3 - math.log(math.exp(3) + math.exp(1) + 1)) + (1 - math.log(math.exp(1) + 1)))
    return batch, {"beta": 1.0}, [first, -log_sigmoid(3.0)]


def case_simpo():
    """beta = 2, gamma = 0.5, lengths [[2, 4]]: pc/len_c = -0.5, pr/len_r = -0.5;
    -log sigma(2 * 0 - 0.5) = log(1 + e^0.5) = 0.9740770"""
    return pair(POLICY, lengths=LENGTHS), {"beta": 2.0, "gamma": 0.5}, [math.log1p(math.exp(0.5))]


def case_fdpg():
    """js; policy = proposal = [[-1]] so w = 1; target [[-2]], log_z 0: lt = -1 - (-2) = 1;
    R = -(log 2 - softplus(-1)) = -(0.6931472 - 0.3132617) = -0.3798855;
    surrogate -w (R - 0) * policy = -(-0.3798855) * (-1) = -0.3798855"""
    batch = pair([[-1.0]], proposal=[[-1.0]], target=[[-2.0]])
    return batch, {}, [-(math.log(2) - math.log1p(math.exp(-1)))]


def case_fdpg_kl():
    """kl (DPG): R = exp(-lt) = e^-1 = 0.3678794; -(0.3678794) * (-1) = 0.3678794"""
    batch = pair([[-1.0]], proposal=[[-1.0]], target=[[-2.0]])
    return batch, {"divergence": "kl"}, [math.exp(-1)]


def case_fdpg_rkl():
    """rkl: R = -(lt + 1) = -2; baseline 0.5: -(1)(-2 - 0.5) * (-1) = -2.5"""
    batch = pair([[-1.0]], proposal=[[-1.0]], target=[[-2.0]])
    return batch, {"divergence": "rkl", "baseline": 0.5}, [-2.5]


def case_fdpg_tv():
    """tv with log_z = 2: lt = -1 - (-2 - 2) = 3; R = -sign(3)/2 = -0.5;
    proposal [[-2]]: w = e^(-1 + 2) = e; -(e * -0.5) * (-1) = -e/2 = -1.3591409"""
    batch = pair([[-1.0]], proposal=[[-2.0]], target=[[-2.0]])
    return batch, {"divergence": "tv", "log_z": 2.0}, [-math.e / 2]


def case_sft():
    """policy [[-1, -2], [-3, -2]], chosen lengths 2 and 4 (mean 3): L_i = -pc_i / 3 = [1/3, 1];
    their mean 2/3 = (1 + 3) / (2 + 4), TRL's token-mean NLL over the batch."""
    batch = pair([[-1.0, -2.0], [-3.0, -2.0]], lengths=[[2, 4], [4, 1]])
    return batch, {}, [1 / 3, 1.0]


def case_ipo():
    """beta = 1, lengths [[2, 4]]: h_avg = 0.5/2 - (-0.5)/4 = 0.375; (0.375 - 1/2)^2 = 0.015625"""
    return pair(POLICY, REFERENCE, lengths=LENGTHS), {"beta": 1.0}, [0.015625]


def case_hinge():
    """beta = 0.5: max(0, 1 - 0.5 * 1) = 0.5"""
    return pair(POLICY, REFERENCE), {"beta": 0.5}, [0.5]


def case_exo_pair():
    """beta = 1, eps = 0.1, q = sigma(1) = 0.7310586:
    q (log q - log 0.9) + (1-q)(log(1-q) - log 0.1)
    = 0.7310586 (-0.3132617 + 0.1053605) + 0.2689414 (-1.3132617 + 2.3025851) = -0.1519880 + 0.2660700 = 0.1140820"""
    q = sigmoid(1.0)
    expected = q * (math.log(q) - math.log(0.9)) + (1 - q) * (math.log(1 - q) - math.log(0.1))
    return pair(POLICY, REFERENCE), {"beta": 1.0, "epsilon": 0.1}, [expected]


def case_nca_pair():
    """beta = 1, rho_c = 0.5, rho_r = -0.5:
    -log sigma(0.5) - 0.5 log sigma(-0.5) - 0.5 log sigma(0.5) = 0.4740770 + 0.4870385 + 0.2370385 = 1.1981540"""
    expected = -log_sigmoid(0.5) - 0.5 * log_sigmoid(-0.5) - 0.5 * log_sigmoid(0.5)
    return pair(POLICY, REFERENCE), {"beta": 1.0}, [expected]


def case_bco_pair():
    """beta = 1: -log sigma(0.5) - log sigma(-(-0.5)) = 2 * 0.4740770 = 0.9481541"""
    return pair(POLICY, REFERENCE), {"beta": 1.0}, [-2 * log_sigmoid(0.5)]


def case_bco_pair_delta():
    """beta = 1, delta = 0.5: -log sigma(0.5 - 0.5) - log sigma(-(-0.5 - 0.5)) = log 2 + 0.3132617 = 1.0064089"""
    return pair(POLICY, REFERENCE), {"beta": 1.0, "delta": 0.5}, [math.log(2) - log_sigmoid(1.0)]


def case_sppo_hard():
    """beta = 0.5 (1/(2 beta) = 1): (0.5 - 1)^2 + (-0.5 + 1)^2 = 0.25 + 0.25 = 0.5"""
    return pair(POLICY, REFERENCE), {"beta": 0.5}, [0.5]


def case_aot():
    """Two pairs, policy [[-1, -2], [-1, -1]] (pc - pr = [1, 0]), reference [[-2, -1], [-1, -1]]
    (rc - rr = [-1, 0]). Unsorted margins would be [2, 0]; AOT sorts each side across the batch:
    sort([1, 0]) - sort([-1, 0]) = [0, 1] - [-1, 0] = [1, 1], so both values are -log sigma(1) = 0.3132617"""
    batch = pair([[-1.0, -2.0], [-1.0, -1.0]], [[-2.0, -1.0], [-1.0, -1.0]])
    return batch, {"beta": 1.0}, [0.3132617, 0.3132617]


def case_aot_unpaired():
    """Same two pairs: rho_c = [-1 + 2, -1 + 1] = [1, 0], rho_r = [-2 + 1, 0] = [-1, 0];
    sort(rho_c) - sort(rho_r) = [0, 1] - [-1, 0] = [1, 1]; eps = 0.25 smooths:
    0.75 * 0.3132617 + 0.25 * 1.3132617 = 0.5632617 each"""
    batch = pair([[-1.0, -2.0], [-1.0, -1.0]], [[-2.0, -1.0], [-1.0, -1.0]])
    return batch, {"beta": 1.0, "epsilon": 0.25}, [0.5632617, 0.5632617]


def case_apo_zero():
    """beta = 1: (1 - sigma(0.5)) + sigma(-0.5) = 2 * 0.3775407 = 0.7550813"""
    return pair(POLICY, REFERENCE), {"beta": 1.0}, [2 * (1 - sigmoid(0.5))]


def case_apo_down():
    """beta = 1: sigma(0.5) + (1 - sigma(1)) = 0.6224593 + 0.2689414 = 0.8914007"""
    return pair(POLICY, REFERENCE), {"beta": 1.0}, [sigmoid(0.5) + 1 - sigmoid(1.0)]


def case_discopop():
    """beta = 1, tau = 1: z = 1, m = sigma(1) = 0.7310586;
    -log sigma(1) (1 - m) + e^-1 m = 0.3132617 * 0.2689414 + 0.3678794 * 0.7310586 = 0.0842490 + 0.2689414 = 0.3531904"""
    m = sigmoid(1.0)
    return pair(POLICY, REFERENCE), {"beta": 1.0, "tau": 1.0}, [-log_sigmoid(1.0) * (1 - m) + math.exp(-1) * m]


def case_sigmoid_norm():
    """beta = 1, lengths [[2, 4]]: h_avg = 0.5/2 + 0.5/4 = 0.375; -log sigma(0.375) = log(1 + e^-0.375) = 0.5243397"""
    return pair(POLICY, REFERENCE, lengths=LENGTHS), {"beta": 1.0}, [math.log1p(math.exp(-0.375))]


CASES = {name[len("case_"):]: function for name, function in sorted(globals().items()) if name.startswith("case_")}


def cases_for(loss_name):
    return [key for key in CASES if key == loss_name or key.startswith(loss_name + "_") and key not in list_losses()]


@pytest.mark.parametrize("name", list_losses())
def test_every_loss_has_a_hand_worked_value(name):
    assert cases_for(name), f"add a case_{name}() with hand-worked arithmetic to {__name__}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_hand_worked_value(case):
    loss_name = next(name for name in sorted(list_losses(), key=len, reverse=True) if case == name or case.startswith(name + "_"))
    batch, hyperparameters, expected = CASES[case]()
    values = get_loss(loss_name)(batch, **hyperparameters)
    torch.testing.assert_close(values, torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=1e-6)


def test_fdpg_gradient_is_the_importance_weighted_advantage():
    """d/d policy of the surrogate is -w (R - baseline): for case_fdpg_tv, -(e * -0.5) = e/2."""
    batch, hyperparameters, _ = CASES["fdpg_tv"]()
    batch.policy.requires_grad_(True)
    get_loss("fdpg")(batch, **hyperparameters).sum().backward()
    torch.testing.assert_close(batch.policy.grad, torch.tensor([[math.e / 2]], dtype=torch.float64))
