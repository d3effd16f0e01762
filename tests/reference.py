"""An independent float64 reference for DO-Conv: the explicit two-stage computation.

Stage 1 applies ``D + I`` depthwise to every input channel's M x N patch (giving D_mul features per
channel and position), stage 2 applies ``W`` like a conventional grouped conv over those features.
No kernel is composed here, so this checks the layer's composition, not just restates it.
"""
import torch
import torch.nn.functional as F


def pad_like_conv(x, conv):
    """Pad ``x`` as ``conv`` (an nn.Conv2d) pads its input: returns the padded input."""
    if conv.padding == 'valid':
        return x
    if conv.padding == 'same':
        pads = []
        for d, k in zip(reversed(conv.dilation), reversed(conv.kernel_size)):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
    else:
        ph, pw = conv.padding
        pads = [pw, pw, ph, ph]
    if conv.padding_mode == 'zeros':
        return F.pad(x, pads)
    return F.pad(x, pads, mode=conv.padding_mode)


def two_stage(x, conv):
    """DO-Conv output of ``conv`` (a DOConv2d) on ``x``, in float64, by the two stages."""
    x = pad_like_conv(x.double(), conv)
    b, c_in = x.shape[:2]
    kh, kw = conv.kernel_size
    mn, g = kh * kw, conv.groups
    weight = conv.weight.double().reshape(conv.out_channels, c_in // g, mn)
    W = weight if conv.W_extra is None else torch.cat([weight, conv.W_extra.double()], 2)
    d_mul = W.shape[2]
    eye = torch.eye(mn, d_mul, dtype=torch.float64)
    DI = eye.expand(c_in, mn, d_mul) if conv.D is None else conv.D.double() + eye
    patches = F.unfold(x, (kh, kw), dilation=conv.dilation, stride=conv.stride)
    patches = patches.view(b, c_in, mn, -1)  # (B, C_in, MN, L)
    feats = torch.einsum('cms,bcml->bcsl', DI, patches)  # stage 1: depthwise, (B, C_in, D_mul, L)
    c_out_g, c_in_g = conv.out_channels // g, c_in // g
    outs = []
    for grp in range(g):  # stage 2: W over the group's global input channels
        f = feats[:, grp * c_in_g:(grp + 1) * c_in_g]
        w = W[grp * c_out_g:(grp + 1) * c_out_g]
        outs.append(torch.einsum('ois,bisl->bol', w, f))
    out = torch.cat(outs, 1)
    if conv.bias is not None:
        out = out + conv.bias.double()[None, :, None]
    h_out = (x.shape[2] - conv.dilation[0] * (kh - 1) - 1) // conv.stride[0] + 1
    return out.view(b, conv.out_channels, h_out, -1)
