"""The first Pool example of the multiprocessing documentation, with only its import changed."""

from corral import Pool

def f(x):
    return x*x

if __name__ == '__main__':
    with Pool(5) as p:
        print(p.map(f, [1, 2, 3]))
