"""Writes the peers benchmark's TorchScript model: a 1-D CNN + self-attention over a 64x16 input.

Seeded, so every run of the set-up writes the same weights. Usage: make_model.py OUT.pt
"""
import sys

import torch
from torch import nn

SEQ, CHANNELS = 64, 16


class CnnAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(CHANNELS, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(32, 32, kernel_size=3, padding=1)
        self.attn = nn.MultiheadAttention(32, num_heads=4, batch_first=True)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [batch, 64, 16] -> channels first for the convolutions.
        h = torch.relu(self.conv1(x.transpose(1, 2)))
        h = torch.relu(self.conv2(h)).transpose(1, 2)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head((h + a).mean(dim=1))


def main() -> None:
    torch.manual_seed(17)
    model = CnnAttention().eval()
    with torch.no_grad():
        scripted = torch.jit.trace(model, torch.randn(2, SEQ, CHANNELS))
    scripted.save(sys.argv[1])
    print(f"wrote {sys.argv[1]}")


if __name__ == "__main__":
    main()
